#!/usr/bin/env python3
"""The dev cluster's test authenticator and scope authorizer (loopback, TLS, stdlib only).

kube-apiserver calls it as
  - a token webhook authenticator (`--authentication-token-webhook-config-file`):
    POST /authenticate with a TokenReview. It knows only the tokens of its token file
    (`<state>/auth/webhook-tokens.json`, random per cluster, written by up.sh); each maps to a
    user whose `extra` carries OpenShift token scopes (`scopes.authorization.openshift.io`),
    which a static-token user cannot carry. Any other token: not authenticated.
  - a webhook authorizer placed before RBAC (`--authorization-config`), called only for requests
    whose user carries that extra (its matchCondition): POST /authorize with a
    SubjectAccessReview. It answers as OpenShift's scope authorizer does: a request the scopes
    cover gets no opinion (RBAC decides, so a scope never adds rights), anything else an
    explicit deny. `user:full` covers everything; `user:info` only `get users/~`
    (user.openshift.io); `user:check-access` only self subject access/rules reviews; unknown
    scopes cover nothing. Discovery (GET /api, /apis, /version, /openapi…) is always covered.

  authwebhook.py --listen 127.0.0.1:PORT --cert FILE --key FILE --tokens FILE
"""

import argparse
import hashlib
import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SCOPES = "scopes.authorization.openshift.io"
MAX_BODY = 1 << 20

# (group, resource, verbs, names or None for any) each scope covers.
SCOPE_RULES = {
    "user:info": [("user.openshift.io", "users", {"get"}, {"~"})],
    "user:check-access": [
        ("authorization.k8s.io", "selfsubjectaccessreviews", {"create"}, None),
        ("authorization.k8s.io", "selfsubjectrulesreviews", {"create"}, None),
        ("authorization.openshift.io", "selfsubjectrulesreviews", {"create"}, None),
    ],
}
DISCOVERY = ("/api", "/apis", "/version", "/openapi", "/healthz", "/readyz", "/livez", "/.well-known")


def covered(scopes, spec):
    """Whether the scopes cover the request of a SubjectAccessReview spec."""
    if "user:full" in scopes:
        return True
    nra = spec.get("nonResourceAttributes")
    if nra is not None:
        path = nra.get("path", "")
        return nra.get("verb") == "get" and any(path == p or path.startswith(p + "/") for p in DISCOVERY)
    ra = spec.get("resourceAttributes") or {}
    group, resource, verb = ra.get("group", ""), ra.get("resource", ""), ra.get("verb", "")
    name, sub = ra.get("name", ""), ra.get("subresource", "")
    for scope in scopes:
        for g, r, verbs, names in SCOPE_RULES.get(scope, []):
            if g == group and r == resource and not sub and verb in verbs and (names is None or name in names):
                return True
    return False


def review_sar(spec):
    """The status of a SubjectAccessReview: no opinion, or an explicit deny."""
    scopes = (spec.get("extra") or {}).get(SCOPES)
    if scopes is None:
        return {"allowed": False}
    if isinstance(scopes, list) and covered(scopes, spec):
        return {"allowed": False, "reason": "covered by the token's scopes; RBAC decides"}
    return {"allowed": False, "denied": True, "reason": f"scopes {scopes} prevent this action"}


class Handler(BaseHTTPRequestHandler):
    server_version = "ambient-dev-authwebhook"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: no token ever reaches a log
        pass

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if urlsplit(self.path).path == "/healthz":
            self.answer(200, {"ok": True})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        try:
            n = int(self.headers.get("Content-Length", "0"))
            if n < 0 or n > MAX_BODY:
                raise ValueError("body too large")
            req = json.loads(self.rfile.read(n) or b"{}")
            spec = req.get("spec") or {}
        except (ValueError, AttributeError):
            self.answer(400, {"error": "bad request"})
            return
        api = req.get("apiVersion", "")
        path = urlsplit(self.path).path  # the API server adds ?timeout=…
        if path == "/authenticate":
            user = self.server.users.get(hashlib.sha256(str(spec.get("token", "")).encode()).hexdigest())
            status = {"authenticated": True, "user": user} if user else {"authenticated": False}
            self.answer(200, {"apiVersion": api or "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
        elif path == "/authorize":
            self.answer(200, {"apiVersion": api or "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "status": review_sar(spec)})
        else:
            self.answer(404, {"error": "not found"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--tokens", required=True)
    a = ap.parse_args()
    host, port = a.listen.rsplit(":", 1)
    with open(a.tokens) as f:
        entries = json.load(f)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    # Tokens are kept only as hashes in memory.
    server.users = {hashlib.sha256(e["token"].encode()).hexdigest(): e["user"] for e in entries}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    # The handshake runs in each request's thread, so a slow client cannot stall accept().
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"authwebhook listening on https://{a.listen} ({len(entries)} tokens)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
