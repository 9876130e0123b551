"""The per-connection session: client frames and the time go in, actions come out."""

from __future__ import annotations

import time

import orjson
import pytest

from realtime_sync.core.auth import Identity, TokenVerifier, mint_token
from realtime_sync.core.outcomes import CloseCode
from realtime_sync.core.protocol import Subscribe
from realtime_sync.core.resume import Resync, ResyncReason
from realtime_sync.core.session import (
    Action,
    CheckCutoff,
    Close,
    Effect,
    ExpireAt,
    Replay,
    Resume,
    Send,
    Session,
    SessionLimits,
    Touch,
    authenticate,
)

SECRET = "s" * 40
LEEWAY_S = 2.0
T0 = float(int(time.time()))  # the session's clock starts now: tokens are minted on the real one
LIMITS = SessionLimits(max_subscriptions=3, rate=1.0, burst=5.0, heartbeat_s=30.0)
VERIFIER = TokenVerifier(algorithms=["HS256"], key=SECRET, leeway_s=LEEWAY_S)


def token(user: str, ttl_s: int = 60) -> str:
    return mint_token(user, secret=SECRET, ttl_s=ttl_s, now=time.time())


def make_session(
    user: str = "alice", expires_at: float = T0 + 60, issued_at: float | None = T0
) -> Session:
    return Session(
        connection_id="c1",
        identity=Identity(user_id=user, expires_at=expires_at, issued_at=issued_at),
        verifier=VERIFIER,
        limits=LIMITS,
        now=T0,
    )


def frame(**fields: object) -> str:
    return orjson.dumps(fields).decode()


def sent(actions: list[Action] | list[Effect]) -> list[dict[str, object]]:
    """The payloads the actions send, decoded."""
    return [orjson.loads(a.payload) for a in actions if isinstance(a, Send)]


def test_start_sends_connected_and_arms_the_expiry_timer() -> None:
    session = make_session()
    actions = session.start()
    assert sent(actions) == [
        {
            "type": "connected",
            "connection_id": "c1",
            "user_id": "alice",
            "heartbeat_s": 30.0,
            "exp": T0 + 60,
        }
    ]
    assert ExpireAt(T0 + 60 + LEEWAY_S) in actions


def test_ping_is_answered_with_pong_echoing_the_id() -> None:
    assert sent(make_session().receive(frame(type="ping", id=4), T0)) == [{"type": "pong", "id": 4}]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        (b"\x00", "bad_frame"),
        (frame(type="dance"), "unknown_type"),
        (frame(type="subscribe"), "bad_message"),
        (frame(type="auth", token="x"), "already_authenticated"),
    ],
)
def test_a_bad_frame_gets_an_error_frame_and_the_session_stays(raw: str | bytes, code: str) -> None:
    session = make_session()
    [reply] = sent(session.receive(raw, T0))
    assert (reply["type"], reply["code"]) == ("error", code)
    assert not session.closed
    assert sent(session.receive(frame(type="ping"), T0)) == [{"type": "pong"}]


def test_frames_beyond_the_burst_close_4029_and_nothing_follows() -> None:
    session = make_session()
    for _ in range(5):
        assert sent(session.receive(frame(type="ping"), T0)) == [{"type": "pong"}]
    assert session.receive(frame(type="ping"), T0) == [
        Close(CloseCode.TOO_MANY, "too many messages")
    ]
    assert session.closed
    assert session.receive(frame(type="ping"), T0 + 100) == []


def test_the_rate_refills_with_time() -> None:
    session = make_session()
    for _ in range(5):
        session.receive(frame(type="ping"), T0)
    assert sent(session.receive(frame(type="ping"), T0 + 1.0)) == [{"type": "pong"}]


def test_a_frame_marks_the_last_activity_and_a_refused_one_does_not() -> None:
    session = make_session()
    session.receive(frame(type="ping"), T0 + 0.5)
    assert session.last_activity == T0 + 0.5
    for _ in range(4):
        session.receive(frame(type="ping"), T0 + 0.5)
    session.receive(frame(type="ping"), T0 + 0.6)  # over the rate: closed
    assert session.last_activity == T0 + 0.5


def test_subscribe_starts_the_subscription_and_rewrites_the_record() -> None:
    session = make_session()
    actions = session.receive(frame(type="subscribe", taskId=7, id="s"), T0)
    assert Touch() in actions
    assert sent(actions) == [{"type": "subscribed", "taskId": 7, "id": "s"}]
    assert session.subscriptions.matches("7")
    assert not session.subscriptions.matches("8")


def test_the_subscription_limit_refuses_a_new_one_but_not_one_already_held() -> None:
    session = make_session()
    for task in (1, 2):
        session.receive(frame(type="subscribe", taskId=task), T0)
    session.receive(frame(type="subscribe", all=True), T0)
    [refused] = sent(session.receive(frame(type="subscribe", taskId=3, id=3), T0))
    assert (refused["code"], refused["id"]) == ("too_many_subscriptions", 3)
    assert not session.subscriptions.tasks & {"3"}
    held = sent(session.receive(frame(type="subscribe", taskId=1), T0))
    assert held == [{"type": "subscribed", "taskId": 1}]
    assert len(session.subscriptions) == 3


def test_unsubscribe_one_task_or_everything() -> None:
    session = make_session()
    for task in (1, 2):
        session.receive(frame(type="subscribe", taskId=task), T0)
    actions = session.receive(frame(type="unsubscribe", taskId=1), T0)
    assert Touch() in actions
    assert sent(actions) == [{"type": "unsubscribed", "taskId": 1}]
    assert session.subscriptions.describe() == ["2"]
    session.receive(frame(type="subscribe", taskId=3), T0)
    assert sent(session.receive(frame(type="unsubscribe", all=True), T0)) == [
        {"type": "unsubscribed", "all": True}
    ]
    assert len(session.subscriptions) == 0


def test_subscribe_with_since_asks_for_a_resume_before_subscribing() -> None:
    session = make_session()
    [resume] = session.receive(frame(type="subscribe", all=True, since="e4", id=1), T0)
    assert resume == Resume(Subscribe(1, True, None, "e4"))
    assert not session.subscriptions.all  # nothing is routed to it before the replay


def test_a_recovered_resume_answers_subscribed_then_replays_in_order() -> None:
    session = make_session()
    [resume] = session.receive(frame(type="subscribe", taskId=7, since="e4"), T0)
    assert isinstance(resume, Resume)
    actions = session.resumed(resume.request, [b'{"n":5}', b'{"n":6}'])
    assert actions[-1] == Replay([b'{"n":5}', b'{"n":6}'])
    assert sent(actions) == [{"type": "subscribed", "taskId": 7, "recovered": True, "replayed": 2}]
    assert Touch() in actions
    assert session.subscriptions.matches("7")


def test_an_unrecoverable_resume_answers_resync_required_then_subscribed() -> None:
    session = make_session()
    [resume] = session.receive(frame(type="subscribe", all=True, since="old"), T0)
    assert isinstance(resume, Resume)
    actions = session.resumed(resume.request, Resync(ResyncReason.WINDOW_ENDED))
    assert sent(actions) == [
        {"type": "resync_required", "since": "old", "all": True, "reason": "window_ended"},
        {"type": "subscribed", "all": True, "recovered": False, "replayed": 0},
    ]
    assert not any(isinstance(a, Replay) for a in actions)
    assert session.subscriptions.all


def test_a_resume_that_finishes_after_a_close_does_nothing() -> None:
    session = make_session()
    [resume] = session.receive(frame(type="subscribe", all=True, since="e1"), T0)
    assert isinstance(resume, Resume)
    session.stop()  # e.g. closed as a slow consumer while the snapshot loaded
    assert session.resumed(resume.request, [b"{}"]) == []
    assert not session.subscriptions.all


def refresh(
    session: Session, fresh: str, cutoff: int | None = None, **fields: object
) -> list[Effect]:
    """A refresh frame, then the answer to its cutoff look-up."""
    [check] = session.receive(frame(type="refresh", token=fresh, **fields), T0)
    assert isinstance(check, CheckCutoff)
    return session.refreshed(check.request, check.identity, cutoff)


def test_a_refresh_for_the_same_user_moves_the_expiry() -> None:
    session = make_session()
    actions = refresh(session, token("alice", 600), id="r")
    [reply] = sent(actions)
    assert (reply["type"], reply["id"]) == ("refreshed", "r")
    assert isinstance(reply["exp"], float | int)
    assert session.expires_at == reply["exp"]
    assert ExpireAt(reply["exp"] + LEEWAY_S) in actions


def test_a_refresh_for_another_user_is_refused_and_the_expiry_stays() -> None:
    session = make_session()
    actions = session.receive(frame(type="refresh", token=token("mallory", 600)), T0)
    assert sent(actions) == [
        {"type": "error", "code": "refresh_refused", "message": "token is for another user"}
    ]
    assert not any(isinstance(a, ExpireAt) for a in actions)
    assert session.expires_at == T0 + 60


def test_an_invalid_refresh_token_is_refused_and_the_session_stays() -> None:
    session = make_session()
    [reply] = sent(session.receive(frame(type="refresh", token="not.a.token"), T0))
    assert (reply["code"], reply["message"]) == ("refresh_refused", "invalid token")
    assert not session.closed


def test_a_refresh_with_a_token_issued_before_the_cutoff_is_refused() -> None:
    issued = int(time.time())
    session = make_session(issued_at=issued + 5)  # connected with a token after the cutoff
    actions = refresh(session, token("alice", 600), cutoff=issued + 1, id="r")
    assert sent(actions) == [
        {"type": "error", "code": "refresh_refused", "message": "token revoked", "id": "r"}
    ]
    assert session.expires_at == T0 + 60
    assert not session.closed


def test_a_refresh_closes_4003_when_the_connections_own_token_is_cut_off() -> None:
    issued = int(time.time())
    session = make_session(issued_at=issued)
    actions = refresh(session, token("alice", 600), cutoff=issued + 1)
    assert actions == [Close(CloseCode.ACCESS_REVOKED, "access revoked")]
    assert session.receive(frame(type="ping"), T0) == []


def test_a_refresh_with_a_token_issued_at_or_after_the_cutoff_is_taken() -> None:
    session = make_session()
    [reply] = sent(refresh(session, token("alice", 600), cutoff=int(time.time())))
    assert reply["type"] == "refreshed"


def test_disconnect_closes_4003_once_a_connection_whose_token_is_before_the_cutoff() -> None:
    session = make_session(issued_at=T0)
    cutoff = int(T0) + 1
    assert session.disconnect(cutoff) == [Close(CloseCode.ACCESS_REVOKED, "access revoked")]
    assert session.disconnect(cutoff) == []


def test_disconnect_leaves_a_connection_opened_with_a_newer_token() -> None:
    session = make_session(issued_at=T0 + 10)
    assert session.disconnect(int(T0) + 1) == []
    assert not session.closed


def test_expiry_closes_4002_only_once_past_the_deadline() -> None:
    session = make_session(expires_at=T0 + 60)
    deadline = T0 + 60 + LEEWAY_S
    assert session.expire(deadline - 1) == [ExpireAt(deadline)]  # early: armed again
    assert session.expire(deadline) == [Close(CloseCode.TOKEN_EXPIRED, "token expired")]
    assert session.receive(frame(type="ping"), deadline) == []
    assert session.expire(deadline + 1) == []


def test_a_refresh_keeps_a_timer_armed_for_the_old_expiry_from_closing() -> None:
    session = make_session(expires_at=T0 + 60)
    refresh(session, token("alice", 600))
    assert session.expire(T0 + 60 + LEEWAY_S) == [ExpireAt(session.expires_at + LEEWAY_S)]


def test_authenticate_takes_only_an_auth_frame_with_a_valid_token() -> None:
    identity = authenticate(frame(type="auth", token=token("bob")), VERIFIER)
    assert isinstance(identity, Identity)
    assert identity.user_id == "bob"
    assert authenticate(frame(type="subscribe", all=True), VERIFIER) == Close(
        CloseCode.UNAUTHORIZED, "authenticate first"
    )
    assert authenticate("not json", VERIFIER) == Close(CloseCode.UNAUTHORIZED, "authenticate first")
    assert authenticate(frame(type="auth", token="not.a.token"), VERIFIER) == Close(
        CloseCode.UNAUTHORIZED, "invalid token"
    )


def test_store_reads_for_since_are_rated_per_connection() -> None:
    limits = SessionLimits(
        max_subscriptions=3,
        rate=1.0,
        burst=5.0,
        heartbeat_s=30.0,
        since_lookup_rate=1.0,
        since_lookup_burst=2.0,
    )
    session = Session(
        connection_id="c1",
        identity=Identity(user_id="alice", expires_at=T0 + 60),
        verifier=VERIFIER,
        limits=limits,
        now=T0,
    )
    assert [session.may_read_store(T0) for _ in range(3)] == [True, True, False]
    assert session.may_read_store(T0 + 1)
