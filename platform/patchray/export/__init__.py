"""Model artifacts: OpenVINO IR export behind the Keras parity gate, and the metadata that
travels with the model (written once, after evaluation)."""
