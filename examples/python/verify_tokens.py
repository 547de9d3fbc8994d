"""A Python service that trusts authd's access tokens.

Most requests are checked locally: PyJWT verifies the token's EdDSA signature against the
keys authd publishes at /.well-known/jwks.json, and its issuer, audience, expiry and type.
That costs no network call, but it cannot know that a session was logged out a moment ago.
Where that matters (changing a password, moving money), the service asks authd's Validate,
which refuses a revoked session's tokens within about a second.

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

    # A user logs in somewhere; this service receives the access token as a bearer token.
    login = authd.Login(auth_pb2.LoginRequest(email=args.email, password=args.password), timeout=5)
    claims = verifier.verify(login.access_token)
    print(f"verified locally: user {claims['sub']} <{claims['email']}>, session {claims['sid']}")

    tampered = login.access_token[:-4] + ("AAAA" if not login.access_token.endswith("AAAA") else "BBBB")
    try:
        verifier.verify(tampered)
        sys.exit("a tampered token verified")
    except jwt.InvalidTokenError as error:
        print(f"tampered token refused locally: {error}")

    answer = authd.Validate(auth_pb2.ValidateRequest(access_token=login.access_token), timeout=5)
    print(f"authd's Validate agrees: user {answer.user_id}")

    # After logout the signature still verifies offline; only Validate knows the session ended.
    authd.Logout(auth_pb2.LogoutRequest(refresh_token=login.refresh_token), timeout=5)
    verifier.verify(login.access_token)
    deadline = time.monotonic() + 5
    while True:
        try:
            authd.Validate(auth_pb2.ValidateRequest(access_token=login.access_token), timeout=5)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            print(f"after logout: still verifies offline, Validate says {error.details()!r}")
            return
        if time.monotonic() > deadline:
            sys.exit("Validate still accepts the token after logout")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
