"""Registers ``twistd otad`` without importing anything heavy at ``twistd --help`` time."""

from twisted.application.service import ServiceMaker

otad = ServiceMaker(
    "otad",
    "otad.tap",
    "Over-the-air enrollment and profile service for Apple devices",
    "otad",
)
