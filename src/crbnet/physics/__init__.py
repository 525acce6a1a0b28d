"""Physics: signal models (Bloch/EPG simulations) and the sequences they play, with the scanner's hardware limits."""
