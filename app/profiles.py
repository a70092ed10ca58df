"""Model profiles (``MICROFACS_PROFILE``): which model files a server may load, chosen by their licences.

* ``research`` (the default): every model, as before; the AU detector, the expression network and the occlusion
  networks are trained on FER2013 / CK+ pixels and are **research use only** (the AU detector: no redistribution).
* ``open``: only models whose weights and training data allow commercial use: Google MediaPipe's BlazeFace, face
  mesh and FaceLandmarker with its 52 blendshapes (Apache-2.0). AUs come from the blendshapes by a fixed map
  (app/blendshape_aus.py), the expression from those AUs by the EMFACS prototypes (app/prototypes.py); there is
  no occlusion pre-filter and no face identity model. models/OPEN_PROFILE.md has the numbers next to research's.

Each manifest entry says which profiles may load it (``"profiles": ["research", "open"]``; written by
``python tools/licences.py --write-manifest``, which also writes NOTICE). ``app.registry.ModelRegistry`` loads only
the models of its profile and refuses an entry not marked for it; ``GET /version`` and ``/metrics`` list only
them; every response carries the profile (the ``X-MicroFACS-Profile`` header, and a ``profile`` field in the
JSON of the analysis endpoints and ``/version``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

Profile = Literal["research", "open"]
PROFILES: tuple[str, ...] = ("research", "open")
HEADER = "x-microfacs-profile"


def entry_profiles(entry: Mapping[str, Any]) -> list[str]:
    """The profiles a manifest entry may be loaded in; an entry that does not say is research only."""
    return list(entry.get("profiles", ["research"]))


def profile_manifest(manifest: Mapping[str, Any], profile: str) -> dict[str, Any]:
    """The manifest JSON (``{"manifest_version", "models"}``) with only the models of ``profile``."""
    models = {name: e for name, e in manifest["models"].items() if profile in entry_profiles(e)}
    return {**manifest, "models": models}


class ProfileHeaderMiddleware:
    """Adds ``X-MicroFACS-Profile: <profile>`` to every response (errors, health checks and docs included)."""

    def __init__(self, app: ASGIApp, profile: str) -> None:
        self.app, self.value = app, profile.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (HEADER.encode("latin-1"), self.value)]
            await send(message)

        await self.app(scope, receive, send_with_header)
