"""The course's plumbing: configuration, errors, files, the run folder, pixel conversions, plots and benchmarks."""
