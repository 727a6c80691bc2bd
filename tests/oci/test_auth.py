"""The auth flow, stepped by hand: no server, every branch of the challenge/token dance."""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest
import yarl

from containerdisks.oci import Credentials, DeniedError, ProtocolError, UnauthorizedError
from containerdisks.oci.auth import (
    OAUTH_CLIENT_ID,
    Authenticator,
    AuthFlow,
    Challenge,
    TokenCache,
    merge_scopes,
    parse_www_authenticate,
    pull_scope,
    push_scope,
    select_challenge,
)
from containerdisks.oci.messages import Purpose, Request, Response
from containerdisks.oci.redact import redact

HOST = "registry.test"
REALM = "https://auth.test/token"
BEARER = f'Bearer realm="{REALM}",service="registry.test"'
SCOPE = pull_scope("cd/fedora")
SECRET = "s3cr3t-p@ss"
TOKEN = "tok-123"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def req() -> Request:
    return Request("GET", yarl.URL(f"https://{HOST}/v2/cd/fedora/manifests/41"))


def resp(status: int, *headers: tuple[str, str], body: bytes = b"") -> Response:
    return Response(status, yarl.URL(f"https://{HOST}/"), tuple(headers), body)


def challenge_401(value: str = BEARER) -> Response:
    return resp(401, ("WWW-Authenticate", value))


def token_reply(value: str = TOKEN, /, **extra: object) -> Response:
    return resp(200, body=json.dumps({"token": value, **extra}).encode())


def finish(flow: AuthFlow, response: Response) -> None:
    with pytest.raises(StopIteration):
        flow.send(response)


# -- WWW-Authenticate parsing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:samalba/my-app:pull,push"',
            [Challenge("bearer", {"realm": "https://auth.docker.io/token",
                                  "service": "registry.docker.io",
                                  "scope": "repository:samalba/my-app:pull,push"})],
        ),
        ('Basic realm="basic-realm"', [Challenge("basic", {"realm": "basic-realm"})]),
        ("BEARER Realm=https://a/t , Service=svc", [
            Challenge("bearer", {"realm": "https://a/t", "service": "svc"})]),
        ('Bearer realm="a\\"b,c", error="insufficient_scope"', [
            Challenge("bearer", {"realm": 'a"b,c', "error": "insufficient_scope"})]),
        ('Basic realm="r", Bearer realm="https://a/t",scope="x y"', [
            Challenge("basic", {"realm": "r"}),
            Challenge("bearer", {"realm": "https://a/t", "scope": "x y"})]),
        ("Negotiate abc123, Basic realm=x", [
            Challenge("negotiate", {"": "abc123"}), Challenge("basic", {"realm": "x"})]),
        ("Bearer", [Challenge("bearer", {})]),
        ("", []),
        (" , ,", []),
    ],
)  # fmt: skip
def test_parse_www_authenticate(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_select_prefers_bearer_and_splits_scopes() -> None:
    chosen = select_challenge(['Basic realm="r"', 'Bearer realm="x",scope="a:b:pull c:d:push"'])
    assert chosen is not None
    assert chosen.scheme == "bearer"
    assert chosen.scopes == ("a:b:pull", "c:d:push")
    assert select_challenge(["Digest realm=x"]) is None


# -- flows ---------------------------------------------------------------------------------


def test_anonymous_registry_sends_one_plain_request() -> None:
    auth = Authenticator(HOST)
    flow = auth.flow(req(), [SCOPE])
    first = next(flow)
    assert first.header("Authorization") is None
    finish(flow, resp(200))


def test_bearer_learned_from_ping_fetches_token_before_the_request() -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    token_request = next(flow)
    assert token_request.purpose is Purpose.TOKEN
    assert token_request.header("Authorization") is None  # anonymous
    assert token_request.url.host == "auth.test"
    assert token_request.url.query.getall("scope") == [SCOPE]
    assert token_request.url.query["service"] == "registry.test"
    retried = flow.send(token_reply())
    assert retried.header("Authorization") == f"Bearer {TOKEN}"
    assert retried.url == req().url
    finish(flow, resp(200))


def test_token_is_reused_until_shortly_before_expiry() -> None:
    clock = Clock()
    auth = Authenticator(HOST, clock=clock)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    flow.send(token_reply(expires_in=300))
    finish(flow, resp(200))

    clock.now += 280  # 20 s left: still good
    flow = auth.flow(req(), [SCOPE])
    assert next(flow).header("Authorization") == f"Bearer {TOKEN}"
    finish(flow, resp(200))

    clock.now += 15  # 5 s left: refresh first
    flow = auth.flow(req(), [SCOPE])
    assert next(flow).purpose is Purpose.TOKEN


@pytest.mark.parametrize(("expires_in", "good_for"), [(None, 60), (10, 60), (0, 60), (120, 120)])
def test_expires_in_defaults_to_60_and_is_never_less(expires_in: int | None, good_for: int) -> None:
    clock = Clock()
    auth = Authenticator(HOST, clock=clock)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    extra = {} if expires_in is None else {"expires_in": expires_in}
    flow.send(token_reply(**extra))
    finish(flow, resp(200))
    clock.now += good_for - 11
    assert next(auth.flow(req(), [SCOPE])).purpose is Purpose.REGISTRY
    clock.now += 2
    assert next(auth.flow(req(), [SCOPE])).purpose is Purpose.TOKEN


def test_access_token_is_accepted_too() -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    retried = flow.send(resp(200, body=b'{"access_token": "only-access"}'))
    assert retried.header("Authorization") == "Bearer only-access"


def test_tokens_are_per_scope_set() -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    flow.send(token_reply())
    finish(flow, resp(200))
    other = auth.flow(req(), [pull_scope("cd/debian")])
    assert next(other).purpose is Purpose.TOKEN


def test_token_flow_fetches_only_the_token() -> None:
    auth = Authenticator(HOST)
    assert not auth.needs_token([SCOPE])  # no Bearer challenge known yet
    assert list(auth.token_flow([SCOPE])) == []
    auth.observe(challenge_401())
    assert auth.needs_token([SCOPE])
    flow = auth.token_flow([SCOPE])
    assert next(flow).purpose is Purpose.TOKEN
    finish(flow, token_reply())
    assert not auth.needs_token([SCOPE])
    assert next(auth.flow(req(), [SCOPE])).header("Authorization") == f"Bearer {TOKEN}"


def test_unexpected_401_gets_a_token_with_the_challenge_scope_first() -> None:
    creds = Credentials("user", SECRET)
    auth = Authenticator(HOST, creds)
    flow = auth.flow(req(), [SCOPE])
    assert next(flow).header("Authorization") is None
    token_request = flow.send(challenge_401(f'{BEARER},scope="repository:cd/fedora:pull,push"'))
    # one resource, its actions joined: the challenge's scope covers the one asked for
    assert token_request.url.query.getall("scope") == ["repository:cd/fedora:pull,push"]
    expected = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    assert token_request.header("Authorization") == expected
    retried = flow.send(token_reply())
    assert retried.header("Authorization") == f"Bearer {TOKEN}"
    finish(flow, resp(200))
    # the token that worked is remembered for the scopes asked, too
    assert next(auth.flow(req(), [SCOPE])).header("Authorization") == f"Bearer {TOKEN}"


def test_a_fresh_token_refused_ends_the_flow() -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    flow.send(token_reply())
    finish(flow, challenge_401(f'{BEARER},scope="{SCOPE}",error="insufficient_scope"'))


def test_a_cached_token_refused_is_replaced_once() -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    flow.send(token_reply("old"))
    finish(flow, resp(200))

    flow = auth.flow(req(), [SCOPE])
    assert next(flow).header("Authorization") == "Bearer old"
    assert flow.send(challenge_401()).purpose is Purpose.TOKEN
    assert flow.send(token_reply("new")).header("Authorization") == "Bearer new"
    finish(flow, challenge_401())  # refused again: no third try


def test_basic_challenge_sends_credentials() -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET))
    auth.observe(challenge_401('Basic realm="basic-realm"'))
    flow = auth.flow(req(), [SCOPE])
    assert (next(flow).header("Authorization") or "").startswith("Basic ")
    finish(flow, challenge_401('Basic realm="basic-realm"'))  # wrong password: no loop


def test_rotated_credentials_drop_the_tokens_fetched_with_the_old_ones() -> None:
    tokens = TokenCache()
    auth = Authenticator(HOST, Credentials("user", SECRET), tokens=tokens)
    tokens.put("other.test", [SCOPE], "theirs", 300)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    first = next(flow)
    assert first.purpose is Purpose.TOKEN
    flow.send(token_reply())
    finish(flow, resp(200))

    assert not auth.use_credentials(Credentials("user", SECRET))  # the same: nothing changes
    assert tokens.get(HOST, [SCOPE]) == TOKEN

    assert auth.use_credentials(Credentials("user", "rotated"))
    assert tokens.get(HOST, [SCOPE]) is None
    assert tokens.get("other.test", [SCOPE]) == "theirs"  # another registry's stay
    flow = auth.flow(req(), [SCOPE])
    again = next(flow)
    assert again.purpose is Purpose.TOKEN
    assert again.header("Authorization") != first.header("Authorization")  # the new password
    assert again.header("Authorization") == "Basic " + base64.b64encode(b"user:rotated").decode()


def test_basic_challenge_unknown_before_is_answered_once() -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET))
    flow = auth.flow(req(), [SCOPE])
    assert next(flow).header("Authorization") is None
    assert flow.send(challenge_401('Basic realm="r"')).header("Authorization") is not None
    finish(flow, resp(200))


def test_basic_challenge_without_credentials_ends_with_the_401() -> None:
    auth = Authenticator(HOST)
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    finish(flow, challenge_401('Basic realm="r"'))


def test_token_service_refusing_credentials_raises_without_the_password() -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET))
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    token_request = next(flow)
    with pytest.raises(UnauthorizedError) as caught:
        flow.send(resp(401, body=b'{"errors":[{"code":"UNAUTHORIZED","message":"bad creds"}]}'))
    text = str(caught.value)
    assert text == (f"token for {HOST} from auth.test ({SCOPE}): HTTP 401 UNAUTHORIZED: bad creds")
    assert SECRET not in text
    assert SECRET not in repr(token_request)
    assert (token_request.header("Authorization") or "") not in text


def test_token_service_403_and_5xx() -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    with pytest.raises(DeniedError):
        flow.send(resp(403))
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    with pytest.raises(Exception, match="HTTP 503") as caught:
        flow.send(resp(503, ("Retry-After", "3")))
    assert getattr(caught.value, "temporary", False)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [(b"nope", "not JSON"), (b"[]", "not a JSON object"), (b'{"token": ""}', "no token"),
     (b'{"expires_in": 60}', "no token")],
)  # fmt: skip
def test_bad_token_replies(reply: bytes, reason: str) -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    with pytest.raises(ProtocolError, match=reason):
        flow.send(resp(200, body=reply))


@pytest.mark.parametrize("realm", ["", "ftp://x/token", "/relative", "https://"])
def test_unusable_realm_is_a_protocol_error(realm: str) -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401(f'Bearer realm="{realm}"'))
    with pytest.raises(ProtocolError, match="unusable realm"):
        next(auth.flow(req(), [SCOPE]))


def test_secrets_never_show_in_reprs() -> None:
    creds = Credentials("user", SECRET)
    assert SECRET not in repr(creds)
    assert "user" in repr(creds)
    auth = Authenticator(HOST, creds)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    request = flow.send(token_reply())
    assert TOKEN not in repr(request)
    assert SECRET not in repr(auth)
    cache = TokenCache()
    cache.put(HOST, [SCOPE], TOKEN, 60)
    assert TOKEN not in repr(cache)
    uploading = Request("PUT", yarl.URL("https://h/v2/x/blobs/uploads/1?_state=SECRETSTATE"))
    assert "SECRETSTATE" not in repr(uploading)


# -- write scopes, mounts, identity and registry tokens ------------------------------------

PUSH = push_scope("cd/fedora")
SOURCE = pull_scope("cd/staging")
IDENTITY = "identity-refresh-token"


def test_merge_scopes_joins_actions_per_resource() -> None:
    assert merge_scopes(["repository:a:push,pull"], ["repository:a:pull", "repository:b:pull"]) == (
        "repository:a:pull,push",
        "repository:b:pull",
    )
    assert merge_scopes(["registry:catalog:*", "odd"], ["repository:a:delete,push"]) == (
        "registry:catalog:*",
        "odd",
        "repository:a:push,delete",
    )
    assert merge_scopes() == ()


def test_a_mount_asks_one_token_for_both_repositories() -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET))
    auth.observe(challenge_401())
    flow = auth.flow(req(), [PUSH, SOURCE])
    token_request = next(flow)
    assert token_request.url.query.getall("scope") == [PUSH, SOURCE]
    flow.send(token_reply())
    finish(flow, resp(200))
    # that token covers later requests for either repository's pull, and the target's push
    for scopes in ([PUSH], [SCOPE], [SOURCE]):
        assert next(auth.flow(req(), scopes)).header("Authorization") == f"Bearer {TOKEN}"
    assert next(auth.flow(req(), [push_scope("cd/staging")])).purpose is Purpose.TOKEN


def test_a_push_challenge_after_a_pull_token_merges_scopes_challenge_first() -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET))
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SOURCE])
    next(flow)
    flow.send(token_reply("pull-token"))
    finish(flow, resp(200))  # accepted: a proven token
    flow = auth.flow(req(), [SOURCE])
    assert next(flow).header("Authorization") == "Bearer pull-token"
    # the registry wants more than asked (a mount through an older client, say)
    token_request = flow.send(challenge_401(f'{BEARER},scope="{PUSH}"'))
    assert token_request.url.query.getall("scope") == [PUSH, SOURCE]
    assert flow.send(token_reply("wide")).header("Authorization") == "Bearer wide"
    finish(flow, resp(201))
    assert next(auth.flow(req(), [SOURCE])).header("Authorization") == "Bearer wide"


def test_a_refused_token_never_accepted_is_final_even_when_fetched_before_the_flow() -> None:
    auth = Authenticator(HOST)
    auth.observe(challenge_401())
    fetch = auth.token_flow([PUSH])  # what the client does for concurrent requests
    next(fetch)
    finish(fetch, token_reply("pull-only"))  # an anonymous caller gets less than asked
    flow = auth.flow(req(), [PUSH])
    assert next(flow).header("Authorization") == "Bearer pull-only"
    finish(flow, challenge_401(f'{BEARER},scope="repository:cd/fedora:push,pull",error="x"'))


def test_a_token_accepted_before_then_refused_is_refreshed_once() -> None:
    clock = Clock()
    auth = Authenticator(HOST, Credentials("user", SECRET), clock=clock)
    auth.observe(challenge_401())
    flow = auth.flow(req(), [PUSH])
    next(flow)
    flow.send(token_reply("first", expires_in=300))
    finish(flow, resp(202))
    clock.now += 100  # still valid by its expiry, but the registry revoked it
    flow = auth.flow(req(), [PUSH])
    assert next(flow).header("Authorization") == "Bearer first"
    refresh = flow.send(challenge_401())
    assert refresh.purpose is Purpose.TOKEN
    assert refresh.url.query.getall("scope") == [PUSH]
    assert flow.send(token_reply("second")).header("Authorization") == "Bearer second"
    finish(flow, challenge_401())  # refused again: no third token


def test_identity_token_uses_the_oauth2_post() -> None:
    auth = Authenticator(HOST, Credentials(identity_token=IDENTITY))
    auth.observe(challenge_401())
    flow = auth.flow(req(), [PUSH, SOURCE])
    post = next(flow)
    assert (post.method, post.purpose, str(post.url)) == ("POST", Purpose.TOKEN, REALM)
    assert post.header("Content-Type") == "application/x-www-form-urlencoded"
    assert post.header("Authorization") is None
    form = dict(urllib.parse.parse_qsl((post.body or b"").decode()))
    assert form == {
        "grant_type": "refresh_token",
        "refresh_token": IDENTITY,
        "client_id": OAUTH_CLIENT_ID,
        "service": "registry.test",
        "scope": f"{PUSH} {SOURCE}",  # space-separated in one field
    }
    assert IDENTITY not in repr(post)
    rotated = resp(200, body=json.dumps({"access_token": "oauth", "refresh_token": "r2"}).encode())
    assert flow.send(rotated).header("Authorization") == "Bearer oauth"
    finish(flow, resp(201))
    other = auth.flow(req(), [pull_scope("cd/other")])
    form = dict(urllib.parse.parse_qsl((next(other).body or b"").decode()))
    assert form["refresh_token"] == "r2"  # a rotated refresh token replaces the old one


@pytest.mark.parametrize("status", [404, 405])
def test_oauth2_post_falls_back_to_get(status: int) -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET, identity_token=IDENTITY))
    auth.observe(challenge_401())
    flow = auth.flow(req(), [PUSH])
    assert next(flow).method == "POST"
    get = flow.send(resp(status))
    assert (get.method, get.purpose) == ("GET", Purpose.TOKEN)
    assert get.url.query.getall("scope") == [PUSH]
    assert (get.header("Authorization") or "").startswith("Basic ")
    assert flow.send(token_reply()).header("Authorization") == f"Bearer {TOKEN}"
    finish(flow, resp(201))


def test_oauth2_post_refused_is_an_error_without_the_token() -> None:
    auth = Authenticator(HOST, Credentials(identity_token=IDENTITY))
    auth.observe(challenge_401())
    flow = auth.flow(req(), [PUSH])
    next(flow)
    with pytest.raises(UnauthorizedError) as caught:
        flow.send(resp(401, body=b'{"errors":[{"code":"UNAUTHORIZED","message":"expired"}]}'))
    assert IDENTITY not in str(caught.value)
    assert (
        str(caught.value)
        == f"token for {HOST} from auth.test ({PUSH}): HTTP 401 UNAUTHORIZED: expired"
    )


def test_a_registry_token_is_sent_as_it_is_and_never_refreshed() -> None:
    auth = Authenticator(HOST, Credentials(registry_token="ready-made"))
    auth.observe(challenge_401())
    assert not auth.needs_token([PUSH])
    flow = auth.flow(req(), [PUSH])
    assert next(flow).header("Authorization") == "Bearer ready-made"
    finish(flow, challenge_401())


def test_credentials_without_a_password_send_no_basic() -> None:
    auth = Authenticator(HOST, Credentials(identity_token=IDENTITY))
    auth.observe(challenge_401('Basic realm="r"'))
    flow = auth.flow(req(), [SCOPE])
    assert next(flow).header("Authorization") is None
    finish(flow, challenge_401('Basic realm="r"'))


def test_token_cache_coverage() -> None:
    cache = TokenCache(Clock())
    cache.put(HOST, [PUSH, SOURCE], "t", 300)
    assert cache.get(HOST, [SCOPE]) == "t"
    assert cache.get(HOST, ["repository:cd/fedora:push"]) == "t"
    assert cache.get(HOST, [SCOPE, SOURCE]) == "t"
    assert cache.get(HOST, ["repository:cd/staging:push"]) is None
    assert cache.get("other.test", [SCOPE]) is None
    cache.put(HOST, ["registry:catalog:*"], "c", 300)
    assert cache.get(HOST, ["registry:catalog:*"]) == "c"
    cache.forget(HOST, "t")
    assert cache.get(HOST, [SCOPE]) is None


def _challenge_over(scheme: str, realm: str) -> Response:
    url = yarl.URL(f"{scheme}://{HOST}/v2/")
    return Response(401, url, (("WWW-Authenticate", f'Bearer realm="{realm}"'),))


def test_plain_http_realm_of_an_https_registry_is_refused() -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET))
    auth.observe(_challenge_over("https", "http://auth.test/token?x=1"))
    with pytest.raises(ProtocolError) as caught:
        next(auth.flow(req(), [SCOPE]))
    assert str(caught.value) == (
        f"{HOST}: token realm http://auth.test/token is plain http for an https registry;"
        " refused (--insecure-skip-tls allows it)"
    )


@pytest.mark.parametrize(
    ("registry_scheme", "realm", "allow"),
    [
        ("https", "http://auth.test/token", True),  # --insecure-skip-tls
        ("http", "http://auth.test/token", False),  # a plain-http registry already is in clear
        ("https", "https://auth.test/token", False),
    ],
)
def test_realm_accepted(registry_scheme: str, realm: str, allow: bool) -> None:
    auth = Authenticator(HOST, Credentials("user", SECRET), allow_http_realm=allow)
    auth.observe(_challenge_over(registry_scheme, realm))
    token_request = next(auth.flow(req(), [SCOPE]))
    assert token_request.purpose is Purpose.TOKEN
    assert str(token_request.url.with_query(None)) == realm


def test_tokens_and_credentials_are_registered_as_secrets() -> None:
    refresh = "rotated-refresh-token"
    auth = Authenticator(HOST, Credentials(identity_token="identity-1234"))
    auth.observe(challenge_401())
    flow = auth.flow(req(), [SCOPE])
    next(flow)
    flow.send(token_reply("access-token-5678", refresh_token=refresh))
    echoed = f"{SECRET} identity-1234 access-token-5678 {refresh}"
    Credentials("user", SECRET)
    assert redact(echoed) == "*** *** *** ***"
