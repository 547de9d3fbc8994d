"""A Python service that trusts authd's access tokens.

Requests are checked locally: PyJWT verifies the token's EdDSA signature against the keys
authd publishes at /.well-known/jwks.json, and its issuer, audience, expiry and type; and a
background thread follows authd's revocation feed (WatchRevocations), so a logged-out
session's tokens are refused within milliseconds, with no call per request. When the feed has
been silent too long, verification fails closed. Validate remains for services that would
rather ask: it gives the same answers.

    python3 verify_tokens.py --grpc 127.0.0.1:50051 --jwks-url http://127.0.0.1:8080/.well-known/jwks.json \
        --email alice@example.com --password '...'

The gRPC stubs are generated from proto/auth/v1/auth.proto at start-up with grpcio-tools.
"""

import argparse
import atexit
import pathlib
import shutil
import sys
import tempfile
import threading
import time

import grpc
import jwt
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs():
    """Generates auth_pb2 and auth_pb2_grpc into a temporary folder and imports them."""
    out = tempfile.mkdtemp(prefix="authd-stubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main([
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / "auth/v1/auth.proto"),
    ])
    if status != 0:
        sys.exit("could not generate the gRPC stubs")
    sys.path.insert(0, out)
    from auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402 (generated above)
    return auth_pb2, auth_pb2_grpc


class TokenVerifier:
    """Verifies access tokens offline against authd's published keys (cached by kid)."""

    def __init__(self, jwks_url, issuer, audience):
        self.keys = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300)
        self.issuer = issuer
        self.audience = audience

    def verify(self, token):
        """The token's claims, or jwt.InvalidTokenError."""
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "at+jwt":
            raise jwt.InvalidTokenError("not an access token")
        key = self.keys.get_signing_key_from_jwt(token)
        return jwt.decode(
            token,
            key.key,
            algorithms=["EdDSA"],
            issuer=self.issuer,
            audience=self.audience,
            options={"require": ["exp", "iat", "sub", "sid"]},
        )


class RevocationFeed:
    """Follows authd's revocation feed in a background thread: the revoked sessions, each
    until its tokens have expired, and when the feed last vouched for the whole set."""

    def __init__(self, stub, pb2, staleness=30.0):
        self.stub, self.pb2, self.staleness = stub, pb2, staleness
        self.revoked = {}  # session id -> forget after (Unix seconds)
        self.heard = None  # time.monotonic() of the last message of a caught-up stream
        self.position = ""  # resume from here after a reconnect: nothing is missed
        self.lock = threading.Lock()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self):
        pause = 0.1
        while True:
            try:
                request = self.pb2.WatchRevocationsRequest(resume_from=self.position)
                for message in self.stub.WatchRevocations(request):
                    with self.lock:
                        for session in message.revoked:
                            self.revoked[session.session_id] = session.forget_after.seconds + 1
                        if message.caught_up:
                            self.heard = time.monotonic()
                            now = time.time()
                            self.revoked = {s: t for s, t in self.revoked.items() if t > now}
                    self.position = message.position
                    pause = 0.1
            except grpc.RpcError:
                pass  # reconnect, resuming from the last position
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def check(self, session_id):
        """Raises jwt.InvalidTokenError if the session was revoked, or the feed is stale."""
        with self.lock:
            if session_id in self.revoked:
                raise jwt.InvalidTokenError("session revoked")
            if self.heard is None or time.monotonic() - self.heard > self.staleness:
                raise jwt.InvalidTokenError("revocation feed stale: failing closed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", default="127.0.0.1:50051")
    parser.add_argument("--jwks-url", default="http://127.0.0.1:8080/.well-known/jwks.json")
    parser.add_argument("--issuer", default="authd")
    parser.add_argument("--audience", default="internal-services")
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", required=True)
    args = parser.parse_args()

    auth_pb2, auth_pb2_grpc = load_stubs()
    authd = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(args.grpc))
    verifier = TokenVerifier(args.jwks_url, args.issuer, args.audience)
    feed = RevocationFeed(authd, auth_pb2)
    deadline = time.monotonic() + 10
    while feed.heard is None:
        if time.monotonic() > deadline:
            sys.exit("the revocation feed did not arrive")
        time.sleep(0.01)

    # A user logs in somewhere; this service receives the access token as a bearer token.
    login = authd.Login(auth_pb2.LoginRequest(email=args.email, password=args.password), timeout=5)
    claims = verifier.verify(login.access_token)
    feed.check(claims["sid"])
    print(f"verified locally: user {claims['sub']} <{claims['email']}>, session {claims['sid']}")

    tampered = login.access_token[:-4] + ("AAAA" if not login.access_token.endswith("AAAA") else "BBBB")
    try:
        verifier.verify(tampered)
        sys.exit("a tampered token verified")
    except jwt.InvalidTokenError as error:
        print(f"tampered token refused locally: {error}")

    answer = authd.Validate(auth_pb2.ValidateRequest(access_token=login.access_token), timeout=5)
    print(f"authd's Validate agrees: user {answer.user_id}")

    # After logout the signature still verifies; the feed names the session at once.
    authd.Logout(auth_pb2.LogoutRequest(refresh_token=login.refresh_token), timeout=5)
    logged_out = time.monotonic()
    verifier.verify(login.access_token)
    while True:
        try:
            feed.check(claims["sid"])
        except jwt.InvalidTokenError as error:
            took = (time.monotonic() - logged_out) * 1000
            print(f"after logout: refused locally ({error}), {took:.1f} ms after Logout answered")
            break
        if time.monotonic() - logged_out > 5:
            sys.exit("the feed did not name the logged-out session")
        time.sleep(0.001)
    deadline = time.monotonic() + 5
    while True:
        try:
            authd.Validate(auth_pb2.ValidateRequest(access_token=login.access_token), timeout=5)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            print(f"and Validate says {error.details()!r}")
            return
        if time.monotonic() > deadline:
            sys.exit("Validate still accepts the token after logout")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
