"""What this server does not offer under /v1: 501 `unsupported_feature` in the error schema
(hyv.service.api.errors), naming the feature, for

- OpenAI's video characters (`POST /v1/videos/characters`, `GET /v1/videos/characters/{id}`);
- the rest of OpenAI's API (chat, images, embeddings, files...: the official SDK's resources), every
  path under the first segment of theirs and every method.

Every other unknown path, and a method a path does not take, gets the router's 404 or 405 (with
`Allow`), which hyv.service.api.errors answers in the same schema. No route here takes a path under
/v1/videos/ but the characters', so none can shadow a video route, wherever it is registered;
hyv.service.api.app includes this router last all the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request

from hyv.service.api.errors import UnsupportedFeatureError

router = APIRouter(prefix="/v1", tags=["videos"])

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SERVED = "this server offers OpenAI's Videos API (/v1/videos) and /v1/models"

# The parts of OpenAI's API this server does not offer, by the first segment of their /v1 path.
OPENAI_APIS: dict[str, str] = {
    "assistants": "Assistants",
    "audio": "Audio",
    "batches": "Batch",
    "chat": "Chat Completions",
    "chatkit": "ChatKit",
    "completions": "Completions",
    "containers": "Containers",
    "conversations": "Conversations",
    "embeddings": "Embeddings",
    "evals": "Evals",
    "files": "Files",
    "fine_tuning": "Fine-tuning",
    "images": "Images",
    "moderations": "Moderations",
    "organization": "Administration",
    "realtime": "Realtime",
    "responses": "Responses",
    "skills": "Skills",
    "threads": "Threads",
    "uploads": "Uploads",
    "vector_stores": "Vector Stores",
}


def _characters_unsupported() -> UnsupportedFeatureError:
    return UnsupportedFeatureError(
        "characters are not supported by this server: a video is made from its prompt and, for "
        "image-to-video, an input_reference image"
    )


# Out of the OpenAPI document, which lists what this server offers (docs/api.md lists these).
@router.post("/videos/characters", status_code=501, include_in_schema=False)
async def create_character() -> None:
    raise _characters_unsupported()


@router.get("/videos/characters/{character_id}", status_code=501, include_in_schema=False)
async def get_character(character_id: str) -> None:
    raise _characters_unsupported()


def _answer_unsupported_api(feature: str) -> Callable[[Request], Awaitable[None]]:
    async def unsupported_api(request: Request) -> None:
        raise UnsupportedFeatureError(
            f"OpenAI's {feature} API ({request.method} {request.url.path}) is not supported by this "
            f"server: {SERVED}"
        )

    return unsupported_api


for _segment, _feature in OPENAI_APIS.items():
    for _path in (f"/{_segment}", f"/{_segment}/{{rest:path}}"):
        router.add_api_route(
            _path, _answer_unsupported_api(_feature), methods=METHODS, include_in_schema=False
        )
