"""The HTTP service: endpoints, validation and error codes, through FastAPI's TestClient."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'hpcl4sr[serve]')")
from fastapi.testclient import TestClient  # noqa: E402

import hpcl4sr  # noqa: E402
from hpcl4sr.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(served: Path) -> TestClient:
    rec = hpcl4sr.load(served)
    with TestClient(create_app(rec), raise_server_exceptions=False) as test_client:
        test_client.rec = rec
        yield test_client


def test_health_and_docs(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "hpcl4sr" and health["index"] == "exact"
    assert client.get("/docs").status_code == 200
    assert "/recommendations" in client.get("/openapi.json").json()["paths"]
    assert "<form" in client.get("/").text


def test_user_recommendations_match_the_python_api(client):
    user = client.rec.data.user_ids[4]
    body = client.get(f"/users/{user}/recommendations", params={"n": 7}).json()
    assert body == client.rec.recommend(user=user, n=7).to_dict()
    assert len(body["items"]) == 7 and body["user"] == user


def test_history_recommendations_and_items(client):
    items = client.rec.data.item_ids
    body = client.post("/recommendations", json={"history": [items[3], "zzz", int(items[5][1:]) * 0], "n": 4}).json()
    assert body["unknown"] == ["zzz", "0"] and len(body["items"]) == 4 and not body["cold"]
    assert client.post("/recommendations", json={"history": ["zzz"]}).json()["cold"] is True
    item = client.get(f"/items/{items[3]}").json()
    assert item["item"] == items[3] and item["interactions"] > 0
    interests = client.post("/interests", json={"history": [items[3]], "n": 2}).json()["interests"]
    assert len(interests) == 3 and all(len(i["items"]) == 2 for i in interests)


@pytest.mark.parametrize(("method", "path", "payload", "status"), [
    ("get", "/users/no-such-user/recommendations", None, 404),
    ("get", "/items/no-such-item", None, 404),
    ("get", "/users/no-such-user/interests", None, 404),
    ("post", "/recommendations", {"n": 5}, 422),  # no history
    ("post", "/recommendations", {"history": "i1"}, 422),
    ("post", "/recommendations", {"history": [], "n": 5, "extra": 1}, 422),
    ("post", "/recommendations", {"history": [], "n": 0}, 422),
    ("post", "/recommendations", {"history": [], "n": 1001}, 422),
    ("post", "/recommendations", {"history": ["a"], "times": [1, 2]}, 400),
])
def test_bad_requests_get_json_errors(client, method, path, payload, status):
    response = getattr(client, method)(path, **({"json": payload} if payload is not None else {}))
    assert response.status_code == status
    assert "error" in response.json()


@pytest.mark.parametrize("n", ["0", "1001", "x"])
def test_n_outside_the_range_is_422(client, n):
    user = client.rec.data.user_ids[0]
    response = client.get(f"/users/{user}/recommendations", params={"n": n})
    assert response.status_code == 422 and "error" in response.json()


def test_malformed_json_is_422(client):
    response = client.post("/recommendations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def test_bodies_over_one_megabyte_are_413_by_header_or_by_stream(client):
    big = b'{"history": [' + b'"1",' * 300_000 + b'"1"]}'
    assert client.post("/recommendations", content=big,
                       headers={"Content-Type": "application/json"}).status_code == 413

    def chunks():  # no Content-Length: the size is only known as the body streams in
        for _ in range(20):
            yield b" " * 100_000

    streamed = client.post("/recommendations", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413 and streamed.json() == {"error": "request body over 1 MB"}


def test_an_internal_failure_is_a_json_500_without_traceback(client, monkeypatch):
    def broken(**_):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(client.rec, "item", broken)
    response = client.get("/items/anything")
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    assert "Traceback" not in response.text and "secret" not in response.text


def test_the_micro_batcher_answers_concurrent_requests_as_single_ones(client):
    import asyncio

    from hpcl4sr.serve.app import MicroBatcher

    rec = client.rec
    batcher = MicroBatcher(rec, max_batch=3)
    asks = [(rec.query(user=user), n) for user, n in zip(rec.data.user_ids[:7], (5, 5, 9, 5, 9, 5, 1))]

    async def together():
        return await asyncio.gather(*(batcher.recommend(query, n) for query, n in asks))

    answers = asyncio.run(together())
    assert [a.to_dict() for a in answers] == [rec.recommend_queries([q], n)[0].to_dict() for q, n in asks]
