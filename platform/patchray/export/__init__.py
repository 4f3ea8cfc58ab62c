"""Model artifacts: OpenVINO IR export and the metadata that travels with it."""
