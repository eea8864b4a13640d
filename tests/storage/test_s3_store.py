"""S3BlobStore against a real S3-protocol server (@20minutes/s3rver, a node process), downloads with plain httpx.

The server (started by tests/support/s3rver.py) verifies SigV4 signatures like S3 does, for the
store's own header-signed API calls and for presigned URLs: a changed signature, object key,
X-Amz-Expires, X-Amz-Date or response-content-disposition, or a URL signed with another secret,
gets 403 SignatureDoesNotMatch; an unknown access key gets 403 InvalidAccessKeyId; an expired URL
gets 403 AccessDenied "Request has expired". All of that is asserted against the server below.

What it does not do, so nothing here relies on it: it enforces no access control (a request with
no signature at all is served anonymously), it answers a suffix range ``bytes=-N`` with the first
N+1 bytes, and it wrongly refuses a signed query value containing any of ``!'()*``.
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from botocore.exceptions import ClientError

from bota_ota.storage.s3 import S3BlobStore
from tests.support.s3rver import S3rverInfo

pytestmark = pytest.mark.s3

BASE_URL = "http://ota.example.test"  # ignored by the S3 store; part of the BlobStore interface
TTL_S = 300


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def payload() -> bytes:
    return os.urandom(300 * 1024 + 7)


@pytest.fixture
def stored(s3_store: S3BlobStore, payload: bytes, tmp_path: Path) -> str:
    """Upload ``payload`` under a key and return the key."""
    key = "firmware/bota-rec/1.2.3/image.bin"
    source = tmp_path / "upload.bin"
    source.write_bytes(payload)
    s3_store.put_file(key, source)
    return key


def get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=10)


def query_params(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def replace_query_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    params = [(k, value if k == name else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    assert name in dict(params), f"{name} not in {url}"
    return urlunsplit(parts._replace(query=urlencode(params, quote_via=quote)))


def replace_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


def flip_last_char(value: str) -> str:
    return value[:-1] + ("0" if value[-1] != "0" else "1")


def signed_at(url: str) -> datetime:
    return datetime.strptime(query_params(url)["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def assert_signature_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert "<Code>SignatureDoesNotMatch</Code>" in response.text, response.text


def store_with_wrong_secret(s3rver: S3rverInfo, bucket: str) -> S3BlobStore:
    return S3BlobStore(
        bucket=bucket,
        region=s3rver.region,
        endpoint_url=s3rver.endpoint_url,
        access_key_id=s3rver.access_key_id,
        secret_access_key="wrong",
    )


# --- upload and download -------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["firmware/image.bin", "firmware/with space+plus/ä-ü~v1.2.bin"])
def test_put_file_then_signed_url_downloads_exact_bytes(
    s3_store: S3BlobStore, payload: bytes, tmp_path: Path, key: str
) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(payload)

    s3_store.put_file(key, source)
    signed = s3_store.signed_get_url(key, base_url=BASE_URL, ttl_s=TTL_S)
    response = get(signed.url)

    assert response.status_code == 200, response.text
    assert response.content == payload
    assert response.headers["content-length"] == str(len(payload))
    assert response.headers["content-type"] == "application/octet-stream"
    assert "content-disposition" not in response.headers
    assert signed.url.startswith(f"{s3_store.client.meta.endpoint_url}/{s3_store.bucket}/")


def test_put_file_multipart_upload(s3_store: S3BlobStore, tmp_path: Path) -> None:
    """Above boto3's 8 MiB threshold upload_file switches to a multipart upload."""
    payload = os.urandom(9 * 1024 * 1024 + 1234)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)

    s3_store.put_file("firmware/big.bin", source)
    response = get(s3_store.signed_get_url("firmware/big.bin", base_url=BASE_URL, ttl_s=TTL_S).url)

    assert response.status_code == 200, response.text
    assert response.headers["content-length"] == str(len(payload))
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(payload).digest()


def test_put_file_keeps_content_type(s3_store: S3BlobStore, tmp_path: Path) -> None:
    source = tmp_path / "manifest.json"
    source.write_bytes(b'{"version": "1.2.3"}')

    s3_store.put_file("manifests/1.2.3.json", source, content_type="application/json")
    response = get(s3_store.signed_get_url("manifests/1.2.3.json", base_url=BASE_URL, ttl_s=TTL_S).url)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"version": "1.2.3"}'


def test_put_file_overwrites_existing_key(s3_store: S3BlobStore, stored: str, tmp_path: Path) -> None:
    source = tmp_path / "new.bin"
    source.write_bytes(b"replacement")

    s3_store.put_file(stored, source)

    assert get(s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url).content == b"replacement"


def test_range_request_returns_206_and_exact_slice(s3_store: S3BlobStore, stored: str, payload: bytes) -> None:
    url = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url

    response = get(url, Range="bytes=100-199")

    assert response.status_code == 206, response.text
    assert response.content == payload[100:200]
    assert response.headers["content-length"] == "100"
    assert response.headers["content-range"] == f"bytes 100-199/{len(payload)}"
    assert response.headers["accept-ranges"] == "bytes"


def test_open_ended_range_request(s3_store: S3BlobStore, stored: str, payload: bytes) -> None:
    url = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url

    response = get(url, Range="bytes=1000-")

    assert response.status_code == 206, response.text
    assert response.content == payload[1000:]
    assert response.headers["content-length"] == str(len(payload) - 1000)
    assert response.headers["content-range"] == f"bytes 1000-{len(payload) - 1}/{len(payload)}"


def test_filename_sets_content_disposition(s3_store: S3BlobStore, stored: str, payload: bytes) -> None:
    signed = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S, filename="bota-rec-1.2.3.bin")

    response = get(signed.url)

    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="bota-rec-1.2.3.bin"'
    assert response.content == payload
    # The override is part of the signed query, so it cannot be changed without breaking the signature.
    assert "response-content-disposition" in query_params(signed.url)


def test_signed_url_expires_at_matches_the_url(s3_store: S3BlobStore, stored: str) -> None:
    before = datetime.now(UTC)
    signed = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S)
    params = query_params(signed.url)

    assert params["X-Amz-Expires"] == str(TTL_S)
    assert params["X-Amz-Credential"].startswith("S3RVER/")
    assert params["X-Amz-Credential"].endswith("/us-east-1/s3/aws4_request")
    # X-Amz-Date has whole seconds, so the URL's real deadline is up to 1 s before expires_at.
    deadline = signed_at(signed.url) + timedelta(seconds=TTL_S)
    assert timedelta(0) <= signed.expires_at - deadline < timedelta(seconds=2)
    assert before + timedelta(seconds=TTL_S) <= signed.expires_at


# --- exists / delete -----------------------------------------------------------------------------


def test_exists(s3_store: S3BlobStore, stored: str) -> None:
    assert s3_store.exists(stored) is True
    assert s3_store.exists("firmware/never-uploaded.bin") is False
    assert s3_store.exists(stored.rsplit("/", 1)[0]) is False  # a "folder" prefix is not an object


def test_delete_then_url_no_longer_downloads(s3_store: S3BlobStore, stored: str) -> None:
    url = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url
    assert get(url).status_code == 200

    s3_store.delete(stored)

    response = get(url)
    assert response.status_code in (403, 404), response.text  # this server: 404 NoSuchKey
    assert s3_store.exists(stored) is False


def test_delete_missing_key_is_not_an_error(s3_store: S3BlobStore, stored: str) -> None:
    s3_store.delete("firmware/never-uploaded.bin")
    s3_store.delete(stored)
    s3_store.delete(stored)  # twice

    assert s3_store.exists(stored) is False


def test_create_bucket_is_idempotent(s3rver: S3rverInfo, s3_store: S3BlobStore, stored: str) -> None:
    again = S3BlobStore(
        bucket=s3_store.bucket,
        region=s3rver.region,
        endpoint_url=s3rver.endpoint_url,
        access_key_id=s3rver.access_key_id,
        secret_access_key=s3rver.secret_access_key,
        create_bucket=True,
    )

    assert again.exists(stored) is True


def test_create_bucket_tolerates_another_instance_creating_it_first(
    s3rver: S3rverInfo, s3_store: S3BlobStore, stored: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two instances start together: both find the bucket missing, the other one creates it first.
    real_head = s3_store.client.head_bucket
    calls: list[str] = []

    def missing_the_first_time(**kwargs: Any) -> Any:
        calls.append(kwargs["Bucket"])
        if len(calls) == 1:
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")
        return real_head(**kwargs)

    monkeypatch.setattr(s3_store.client, "head_bucket", missing_the_first_time)
    s3_store._ensure_bucket(s3rver.region)  # create_bucket fails (it exists): fine, it is there
    assert len(calls) == 2
    assert s3_store.exists(stored) is True


# --- expiry and access key (checked by the server) -----------------------------------------------


def test_expired_url_is_refused(s3_store: S3BlobStore, stored: str, payload: bytes) -> None:
    signed = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=2)
    # The server (like S3) refuses the URL once now > X-Amz-Date + X-Amz-Expires, compared to the
    # millisecond; X-Amz-Date is truncated to the whole second, so with ttl 2 the URL is valid for
    # between 1 and 2 seconds after signing.
    deadline = signed_at(signed.url) + timedelta(seconds=2)

    fresh = get(signed.url)
    assert fresh.status_code == 200, fresh.text
    assert fresh.content == payload

    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.25)
    expired = get(signed.url)

    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code>" in expired.text
    assert "Request has expired" in expired.text


def test_ttl_of_one_second_expires_within_a_second(s3_store: S3BlobStore, stored: str) -> None:
    signed = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=1)

    time.sleep(1.05)

    assert get(signed.url).status_code == 403


def test_unknown_access_key_is_refused(s3_store: S3BlobStore, stored: str) -> None:
    url = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url
    credential = query_params(url)["X-Amz-Credential"]

    response = get(replace_query_param(url, "X-Amz-Credential", credential.replace("S3RVER", "NOBODY", 1)))

    assert response.status_code == 403
    assert "<Code>InvalidAccessKeyId</Code>" in response.text


# --- tampering: the server checks the signature, which binds key, expiry and filename ------------


def test_server_refuses_tampered_signature(s3_store: S3BlobStore, stored: str) -> None:
    url = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url
    signature = query_params(url)["X-Amz-Signature"]
    assert get(url).status_code == 200

    response = get(replace_query_param(url, "X-Amz-Signature", flip_last_char(signature)))

    assert_signature_refused(response)


def test_server_refuses_url_with_key_changed(
    s3_store: S3BlobStore, stored: str, payload: bytes, tmp_path: Path
) -> None:
    # A second, existing object, so a 404 cannot pass for a refusal.
    other = tmp_path / "other.bin"
    other.write_bytes(b"someone else's firmware")
    s3_store.put_file("firmware/bota-rec/1.2.3/other.bin", other)
    url = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url
    assert get(url).content == payload

    response = get(replace_path(url, urlsplit(url).path.replace("image.bin", "other.bin")))

    assert_signature_refused(response)


@pytest.mark.parametrize("param", ["X-Amz-Expires", "X-Amz-Date", "response-content-disposition"])
def test_server_refuses_url_with_signed_query_param_changed(s3_store: S3BlobStore, stored: str, param: str) -> None:
    url = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S, filename="a.bin").url
    assert get(url).status_code == 200
    new_value = {
        # A longer lifetime and a later signing time: the URL would still be unexpired, so only
        # the signature check can refuse it (an earlier X-Amz-Date is refused as expired instead).
        "X-Amz-Expires": str(TTL_S + 3600),
        "X-Amz-Date": (signed_at(url) + timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ"),
        "response-content-disposition": 'attachment; filename="b.bin"',
    }[param]
    tampered = replace_query_param(url, param, new_value)
    assert query_params(url)[param] != new_value

    response = get(tampered)

    assert_signature_refused(response)
    assert "content-disposition" not in response.headers


def test_server_refuses_url_signed_with_wrong_secret(s3rver: S3rverInfo, s3_store: S3BlobStore, stored: str) -> None:
    url = store_with_wrong_secret(s3rver, s3_store.bucket).signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url
    genuine = s3_store.signed_get_url(stored, base_url=BASE_URL, ttl_s=TTL_S).url
    # Same access key, same shape of URL: only the secret behind the signature differs.
    assert query_params(url)["X-Amz-Credential"] == query_params(genuine)["X-Amz-Credential"]

    assert_signature_refused(get(url))


def test_server_refuses_header_signed_calls_with_wrong_secret(
    s3rver: S3rverInfo, s3_store: S3BlobStore, stored: str
) -> None:
    """The store's own API calls (signed in the Authorization header) are verified as well."""
    wrong = store_with_wrong_secret(s3rver, s3_store.bucket)

    with pytest.raises(ClientError) as delete_error:
        wrong.delete(stored)
    with pytest.raises(ClientError) as head_error:
        wrong.exists(stored)  # HEAD: no error body, only the status

    assert delete_error.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert head_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert s3_store.exists(stored) is True
