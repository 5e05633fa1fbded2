"""Records of what the detector decided: PortSentry-style log lines and JSON events."""
