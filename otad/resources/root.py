"""The URL tree: ``/``, ``/CA``, ``/enroll`` (and the later phases' URLs), 404 for anything else."""

from __future__ import annotations

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from otad.web import NotFound


class Root(Resource):
    """Dispatches by the first path segment; unknown segments get a 404 with a reason."""

    def __init__(self, children: dict[bytes, IResource]) -> None:
        super().__init__()
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return NotFound()
