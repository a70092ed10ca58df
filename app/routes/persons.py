"""Enrolled persons (app/persons.py): a person's neutral face, kept as model outputs, for ``?person=<id>``."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Depends, Query, Request, Response

from app.analyzer import Analyzer
from app.persons import Person, PersonStore
from app.reference import Reference
from app.respond import expression_out
from app.routes.deps import analyzer_of, multipart_body, person_store, read_files, scope_of, settings_of
from app.schemas import PersonOut
from app.settings import Settings

router = APIRouter(tags=["persons"])

PERSON_BODY = multipart_body(
    "one or more neutral, frontal photos of the same person (repeat the field; at most max_reference_photos, "
    "GET /version); in each, the largest face is used", many=True,
)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def person_out(person: Person, analyzer: Analyzer) -> PersonOut:
    reading = analyzer.reference_reading(person.reference, analyzer.settings.expression_prior)
    return PersonOut(person_id=person.person_id, faces=person.reference.faces, created_at=iso(person.created),
                     expires_at=iso(person.expires), models=person.reference.models, expression=expression_out(reading),
                     warnings=list(person.reference.warnings), profile=analyzer.profile)


@router.post("/persons", response_model=PersonOut, status_code=201, openapi_extra=PERSON_BODY)
async def create_person(
    request: Request,
    side_face_filter: bool = Query(True, description="refuse a reference photo whose face is turned away"),
    occlusion_filter: bool = Query(True, description="refuse a reference photo whose face is occluded"),
    analyzer: Analyzer = Depends(analyzer_of),
    settings: Settings = Depends(settings_of),
    persons: PersonStore = Depends(person_store),
) -> Response:
    """Enrol a person from their neutral photo(s): the photos are read once (expression and AU outputs, averaged)
    and only those numbers are kept, under this API key, until `expires_at`; the photos are not stored. Use the
    returned `person_id` as `?person=` on the image endpoints."""
    files = await read_files(request, {"file": settings.max_reference_photos})
    try:
        photos = [await f.read(settings.max_upload_bytes + 1) for f in files["file"]]
    finally:
        await request.close()

    def enrol() -> Response:
        reference: Reference = analyzer.reference(photos, side_face_filter=side_face_filter,
                                                  occlusion_filter=occlusion_filter)
        person = persons.create(scope_of(request), reference)
        body = person_out(person, analyzer).model_dump_json()
        return Response(body, status_code=201, media_type="application/json",
                        headers={"Location": f"/persons/{person.person_id}"})

    return await request.app.state.admission.run(request, enrol)


@router.get("/persons/{person_id}", response_model=PersonOut)
async def get_person(
    person_id: str, request: Request, analyzer: Analyzer = Depends(analyzer_of),
    persons: PersonStore = Depends(person_store),
) -> PersonOut:
    """An enrolled person: when it was made and expires, how many faces, and how the reference reads."""
    return person_out(persons.get(scope_of(request), person_id), analyzer)


@router.delete("/persons/{person_id}", status_code=204, responses={404: {"description": "unknown person"}})
async def delete_person(person_id: str, request: Request, persons: PersonStore = Depends(person_store)) -> Response:
    """Forget an enrolled person now (what is kept of them is deleted)."""
    persons.delete(scope_of(request), person_id)
    return Response(status_code=204)

