"""The core: configuration, durations, outcomes, histograms, the recorder, schedules,
the adaptive controller and thresholds. Plain Python: no trio, no I/O."""
