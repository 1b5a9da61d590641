"""Using the trained pipeline (chapter 6): the export and its inference graphs, the Predictor and its command line, the ipywidgets app and the web page."""
