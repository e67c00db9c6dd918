"""One small twisted.web resource per URL of the profile service."""
