"""From a recorded history to figures, anomalies and verdicts."""
