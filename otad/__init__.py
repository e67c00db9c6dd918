"""otad: an over-the-air enrollment and configuration-profile service for Apple devices."""

__version__ = "0.2.0"
