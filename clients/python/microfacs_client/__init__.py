"""Python client for the MicroFACS REST service: faces, FACS Action Units and the expression a face appears
to show. Depends only on httpx and pydantic.

    from microfacs_client import Client
    with Client("http://localhost:8000") as mf:
        result = mf.detect_au("photo.jpg")
        for face in result.faces:
            print(face.box, [au.au for au in face.present_action_units()])
        # relative to the same person's neutral face: a photo each call, or an enrolled person
        smile = mf.analyze("smile.jpg", reference="neutral.jpg")
        person = mf.create_person(["neutral1.jpg", "neutral2.jpg"])
        smile = mf.analyze("smile.jpg", person=person.person_id)
        # long videos and archives of images as background jobs
        job = mf.submit("interview.mp4", every=2)
        job.wait(progress=lambda p: print(p.done, "/", p.total))
        tracks = job.result().tracks
"""
from microfacs_client.client import AsyncClient, BatchItem, Client, RetryPolicy
from microfacs_client.errors import MicroFACSError
from microfacs_client.images import encode_png
from microfacs_client.jobs import AsyncJob, Job
from microfacs_client.models import (
    EXPRESSION_LABELS,
    ActionUnit,
    AnalysisResult,
    ArchiveImage,
    ArchiveResult,
    Box,
    DetectActionUnitsResult,
    DetectFacesResult,
    Expression,
    Face,
    ImageInfo,
    JobError,
    JobProgress,
    JobStatus,
    Occlusion,
    Person,
    Pose,
    Readiness,
    RecognizeExpressionResult,
    ReferenceInfo,
    Version,
    VideoEvent,
    VideoInfo,
    VideoResult,
    VideoTrack,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "BatchItem", "Client", "RetryPolicy", "MicroFACSError", "encode_png", "EXPRESSION_LABELS",
    "ActionUnit", "AnalysisResult", "Box", "DetectActionUnitsResult", "DetectFacesResult", "Expression", "Face",
    "ImageInfo", "Occlusion", "Person", "Pose", "Readiness", "RecognizeExpressionResult", "ReferenceInfo", "Version",
    "VideoEvent", "VideoInfo", "VideoResult", "VideoTrack", "Job", "AsyncJob", "JobStatus", "JobProgress",
    "JobError", "ArchiveImage", "ArchiveResult",
]
