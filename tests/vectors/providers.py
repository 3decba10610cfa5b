#!/usr/bin/env python3
"""Independent test vectors for Hookyard's provider signature presets (issue 16).

Written from docs/notes spec16 and the providers' published documentation only,
without looking at the Rust verifier. Regenerate with:

    python3 tests/vectors/providers.py > tests/vectors/providers.json

Everything is deterministic: fixed secrets, fixed timestamps (NOW), fixed bodies,
an Ed25519 key from a fixed seed, a P-256 key from a fixed integer, and RFC 6979
deterministic ECDSA when the installed OpenSSL supports it (otherwise ECDSA
signatures are randomized; the committed JSON is then simply one valid sample).

Before printing, every case is re-checked by the small reference verifier at the
bottom of this file, and the providers' published examples are asserted.
"""

import base64
import hashlib
import hmac
import json
import sys
import urllib.parse

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

NOW = 1764770000
JSON_CT = ("content-type", "application/json")
FORM_CT = ("content-type", "application/x-www-form-urlencoded")
BASE = "https://hooks.example.com"


# ----------------------------------------------------------------------------
# primitives


def hm(key, msg, alg=hashlib.sha256):
    if isinstance(key, str):
        key = key.encode()
    if isinstance(msg, str):
        msg = msg.encode()
    return hmac.new(key, msg, alg).digest()


def hexd(key, msg, alg=hashlib.sha256):
    return hm(key, msg, alg).hex()


def b64d(key, msg, alg=hashlib.sha256):
    return base64.b64encode(hm(key, msg, alg)).decode()


def b64(raw):
    return base64.b64encode(raw).decode()


def tamper(body):
    """Change exactly one character: the last ASCII letter or digit of the body."""
    for i in range(len(body) - 1, -1, -1):
        c = body[i]
        if c.isascii() and c.isalnum():
            if c == "z":
                n = "a"
            elif c == "Z":
                n = "A"
            elif c == "9":
                n = "0"
            else:
                n = chr(ord(c) + 1)
            return body[:i] + n + body[i + 1 :]
    raise ValueError("nothing to tamper in " + body)


def drop(headers, names):
    low = {n.lower() for n in names}
    return [h for h in headers if h[0].lower() not in low]


# ----------------------------------------------------------------------------
# fixed secrets and keys

S = {
    "github": "gh-webhook-secret-hookyard",
    "gitlab": "glpat-style-secret-token-4f9a",
    "bitbucket": "bb-webhook-secret-hookyard",
    "stripe": "whsec_hookyardStripeTestSecret0123456789",
    "shopify": "shpss_hookyard_app_secret_0123456789",
    "slack": "8f742231b10e8888abcd99hookyard85a5",
    "zoom": "zoomSecretTokenHookyard01",
    "meta": "meta-app-secret-hookyard-0123",
    "x": "xConsumerSecretHookyard0123456789abcdef",
    "microsoft-graph": "graph-client-state-7f3a9c",
    "dropbox": "dropbox-app-secret-hk01",
    "twilio": "twilio-auth-token-0123456789abcdef",
    "paddle": "pdl_ntfset_hookyard_endpoint_secret_key",
    "linear": "lin_wh_hookyard_signing_secret_0123",
    "intercom": "intercom-client-secret-hookyard",
    "square": "sq-signature-key-hookyard-0123",
    "mailgun": "key-mailgun-signing-hookyard-0123",
    "pagerduty": "pd-webhook-secret-hookyard-0123",
    "typeform": "typeform-secret-hookyard-0123",
    "calendly": "calendly-signing-key-hookyard-0123",
    "hubspot": "hs-client-secret-0000-hookyard-0123",
}
WRONG = "another-secret-that-is-not-configured"
OLD = "previous-secret-before-rotation"

SW_KEY = b"hookyard standard-webhooks key!!"  # 32 bytes
SW_SECRET = "whsec_" + b64(SW_KEY)
SW_WRONG_SECRET = "whsec_" + b64(b"a different standard-webhooks k!")

ED_SEED = bytes(range(32))
ED_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(ED_SEED)
ED_WRONG = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def whpk(priv):
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "whpk_" + b64(raw)


P256_KEY = ec.derive_private_key(0x686F6F6B79617264_73656E64677269640000000000000001, ec.SECP256R1())
P256_WRONG = ec.derive_private_key(0x1234567890ABCDEF1234567890ABCDEF, ec.SECP256R1())


def spki_b64(priv):
    der = priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b64(der)


def spki_pem(priv):
    return priv.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def ecdsa_sign(priv, data):
    try:
        alg = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
        return priv.sign(data, alg)
    except Exception:  # older OpenSSL: randomized signature
        return priv.sign(data, ec.ECDSA(hashes.SHA256()))


# ----------------------------------------------------------------------------
# case collection

CASES = []


def add(name, scheme, secrets, headers, body, expect, pq, url=None, method="POST", now=NOW, source="python"):
    CASES.append(
        {
            "name": name,
            "scheme": scheme,
            "secrets": list(secrets),
            "url": url,
            "method": method,
            "path_and_query": pq,
            "headers": [list(h) for h in headers],
            "body": body,
            "now": now,
            "expect": expect,
            "source": source,
        }
    )


def standard_set(
    scheme,
    secrets,
    sign,
    key,
    wrong,
    sig_headers=(),
    tolerance=None,
    url=None,
    label=None,
    tamper_fn=None,
    tamper_name="body changed by one character",
):
    """sign(key, ts) -> (headers, body, path_and_query)."""
    label = label or scheme
    h, b, pq = sign(key, NOW)
    add(f"{label}: valid", scheme, secrets, h, b, "ok", pq, url)
    if tamper_fn:
        th, tb = tamper_fn(h, b)
    else:
        th, tb = h, tamper(b)
    add(f"{label}: tampered ({tamper_name})", scheme, secrets, th, tb, "mismatch", pq, url)
    wh, wb, wpq = sign(wrong, NOW)
    add(f"{label}: signed with another key", scheme, secrets, wh, wb, "mismatch", wpq, url)
    if tolerance is not None:
        sh, sb, spq = sign(key, NOW - tolerance - 10)
        add(f"{label}: stale timestamp (tolerance {tolerance}s + 10s)", scheme, secrets, sh, sb, "timestamp", spq, url)
    if sig_headers:
        add(f"{label}: signature header missing", scheme, secrets, drop(h, sig_headers), b, "missing_header", pq, url)
    return h, b, pq


# ----------------------------------------------------------------------------
# presets

# github -----------------------------------------------------------------------
GITHUB_BODY = '{"action":"opened","number":1,"pull_request":{"id":1,"title":"Add README"},"repository":{"full_name":"octo/hello"}}'


def sign_github(k, ts, body=GITHUB_BODY):
    return (
        [
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("X-Hub-Signature-256", "sha256=" + hexd(k, body)),
            JSON_CT,
        ],
        body,
        "/hooks/github",
    )


standard_set("github", [S["github"]], sign_github, S["github"], WRONG, ["X-Hub-Signature-256"])
h, b, pq = sign_github(S["github"], NOW)
add("github: second of two configured secrets verifies (rotation)", "github", [OLD, S["github"]], h, b, "ok", pq)

# gitlab -----------------------------------------------------------------------
GITLAB_BODY = '{"object_kind":"push","event_name":"push","ref":"refs/heads/main","project":{"path_with_namespace":"group/app"}}'


def sign_gitlab(k, ts):
    return (
        [
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Event-UUID", "13792a34-cac6-4fda-95a8-c58e00a3954e"),
            ("X-Gitlab-Token", k),
            JSON_CT,
        ],
        GITLAB_BODY,
        "/hooks/gitlab",
    )


def gitlab_tamper(h, b):
    return [(n, tamper(v) if n == "X-Gitlab-Token" else v) for n, v in h], b


standard_set(
    "gitlab",
    [S["gitlab"]],
    sign_gitlab,
    S["gitlab"],
    WRONG,
    ["X-Gitlab-Token"],
    tamper_fn=gitlab_tamper,
    tamper_name="token differs in one character",
)
h, b, pq = sign_gitlab(S["gitlab"][:-1], NOW)
add("gitlab: token is a prefix of the secret", "gitlab", [S["gitlab"]], h, b, "mismatch", pq)

# bitbucket --------------------------------------------------------------------
BITBUCKET_BODY = '{"push":{"changes":[{"new":{"name":"main","type":"branch"}}]},"repository":{"full_name":"team/repo"}}'


def sign_bitbucket(k, ts):
    return (
        [
            ("X-Event-Key", "repo:push"),
            ("X-Request-UUID", "2f1e4c9a-7a3b-4b8e-9a51-0c2d5b1e7f10"),
            ("X-Hub-Signature", "sha256=" + hexd(k, BITBUCKET_BODY)),
            JSON_CT,
        ],
        BITBUCKET_BODY,
        "/hooks/bitbucket",
    )


standard_set("bitbucket", [S["bitbucket"]], sign_bitbucket, S["bitbucket"], WRONG, ["X-Hub-Signature"])

# stripe -----------------------------------------------------------------------
STRIPE_BODY = '{"id":"evt_1","type":"invoice.paid"}'


def sign_stripe(k, ts, extra_v1=None):
    sig = hexd(k, f"{ts}.{STRIPE_BODY}")
    v = f"t={ts},v1={sig}" if extra_v1 is None else f"t={ts},v1={extra_v1},v1={sig}"
    return [("Stripe-Signature", v), JSON_CT], STRIPE_BODY, "/hooks/stripe"


standard_set("stripe", [S["stripe"]], sign_stripe, S["stripe"], WRONG, ["Stripe-Signature"], tolerance=300)
h, b, pq = sign_stripe(S["stripe"], NOW, extra_v1=hexd(OLD, f"{NOW}.{STRIPE_BODY}"))
add("stripe: two v1 entries, the second matches", "stripe", [S["stripe"]], h, b, "ok", pq)
add(
    "stripe: header without t=",
    "stripe",
    [S["stripe"]],
    [("Stripe-Signature", "v1=" + hexd(S["stripe"], f"{NOW}.{STRIPE_BODY}")), JSON_CT],
    STRIPE_BODY,
    "malformed_header",
    "/hooks/stripe",
)

# shopify ----------------------------------------------------------------------
SHOPIFY_BODY = '{"id":820982911946154508,"email":"jon@example.com","total_price":"199.00","currency":"USD"}'


def sign_shopify(k, ts):
    return (
        [
            ("X-Shopify-Topic", "orders/create"),
            ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
            ("X-Shopify-Shop-Domain", "example.myshopify.com"),
            ("X-Shopify-Hmac-Sha256", b64d(k, SHOPIFY_BODY)),
            JSON_CT,
        ],
        SHOPIFY_BODY,
        "/hooks/shopify",
    )


standard_set("shopify", [S["shopify"]], sign_shopify, S["shopify"], WRONG, ["X-Shopify-Hmac-Sha256"])

# slack ------------------------------------------------------------------------
SLACK_BODY = '{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention"}}'


def slack_headers(k, ts, body):
    return [
        ("X-Slack-Request-Timestamp", str(ts)),
        ("X-Slack-Signature", "v0=" + hexd(k, f"v0:{ts}:{body}")),
    ]


def sign_slack(k, ts):
    return slack_headers(k, ts, SLACK_BODY) + [JSON_CT], SLACK_BODY, "/hooks/slack"


standard_set("slack", [S["slack"]], sign_slack, S["slack"], WRONG, ["X-Slack-Signature"], tolerance=300)

# standard-webhooks / svix -----------------------------------------------------
SW_BODY = '{"type":"user.created","timestamp":"2025-12-03T13:53:20Z","data":{"id":"user_1","email":"a@example.com"}}'
SW_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def sw_sign_entry(k, ts, body=SW_BODY, msg_id=SW_ID):
    content = f"{msg_id}.{ts}.{body}"
    if isinstance(k, ed25519.Ed25519PrivateKey):
        return "v1a," + b64(k.sign(content.encode()))
    key = base64.b64decode(k[len("whsec_") :])
    return "v1," + b64d(key, content)


def sw_signer(prefix, path):
    def sign(k, ts, extra=None):
        sig = sw_sign_entry(k, ts)
        if extra:
            sig = extra + " " + sig
        return (
            [
                (f"{prefix}-id", SW_ID),
                (f"{prefix}-timestamp", str(ts)),
                (f"{prefix}-signature", sig),
                JSON_CT,
            ],
            SW_BODY,
            path,
        )

    return sign


sign_sw = sw_signer("webhook", "/hooks/standard-webhooks")
standard_set(
    "standard-webhooks",
    [SW_SECRET],
    sign_sw,
    SW_SECRET,
    SW_WRONG_SECRET,
    ["webhook-signature"],
    tolerance=300,
    label="standard-webhooks (v1 whsec)",
)
h, b, pq = sign_sw(SW_SECRET, NOW, extra=sw_sign_entry(SW_WRONG_SECRET, NOW))
add("standard-webhooks (v1 whsec): two space-separated entries, the second matches", "standard-webhooks", [SW_SECRET], h, b, "ok", pq)
standard_set(
    "standard-webhooks",
    [whpk(ED_KEY)],
    sign_sw,
    ED_KEY,
    ED_WRONG,
    ["webhook-signature"],
    tolerance=300,
    label="standard-webhooks (v1a whpk ed25519)",
)
h, b, pq = sign_sw(ED_KEY, NOW, extra=sw_sign_entry(SW_SECRET, NOW))
add(
    "standard-webhooks (v1a whpk ed25519): v1 entry ignored, v1a entry matches",
    "standard-webhooks",
    [whpk(ED_KEY)],
    h,
    b,
    "ok",
    pq,
)
h, b, pq = sign_sw(ED_KEY, NOW)
add(
    "standard-webhooks: whsec and whpk configured together, v1a verifies",
    "standard-webhooks",
    [SW_SECRET, whpk(ED_KEY)],
    h,
    b,
    "ok",
    pq,
)

sign_svix = sw_signer("svix", "/hooks/svix")
standard_set("svix", [SW_SECRET], sign_svix, SW_SECRET, SW_WRONG_SECRET, ["svix-signature"], tolerance=300)

# zoom -------------------------------------------------------------------------
ZOOM_BODY = '{"event":"meeting.started","event_ts":1764770000000,"payload":{"account_id":"AAAAAABBBB","object":{"id":"1234567890","topic":"Standup"}}}'


def zoom_headers(k, ts, body):
    return [
        ("x-zm-request-timestamp", str(ts)),
        ("x-zm-signature", "v0=" + hexd(k, f"v0:{ts}:{body}")),
    ]


def sign_zoom(k, ts):
    return zoom_headers(k, ts, ZOOM_BODY) + [JSON_CT], ZOOM_BODY, "/hooks/zoom"


standard_set("zoom", [S["zoom"]], sign_zoom, S["zoom"], WRONG, ["x-zm-signature"], tolerance=300)

# meta -------------------------------------------------------------------------
META_BODY = '{"object":"page","entry":[{"id":"1234567890","time":1764770000,"changes":[{"field":"feed","value":{"item":"status","verb":"add"}}]}]}'


def sign_meta(k, ts):
    return [("X-Hub-Signature-256", "sha256=" + hexd(k, META_BODY)), JSON_CT], META_BODY, "/hooks/meta"


standard_set("meta", [S["meta"]], sign_meta, S["meta"], WRONG, ["X-Hub-Signature-256"])

# x ----------------------------------------------------------------------------
X_BODY = '{"for_user_id":"2244994945","tweet_create_events":[{"id_str":"1","text":"hello"}]}'


def sign_x(k, ts):
    return [("x-twitter-webhooks-signature", "sha256=" + b64d(k, X_BODY)), JSON_CT], X_BODY, "/hooks/x"


standard_set("x", [S["x"]], sign_x, S["x"], WRONG, ["x-twitter-webhooks-signature"])

# microsoft-graph --------------------------------------------------------------


def graph_body(*states):
    items = [
        '{"subscriptionId":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07","clientState":"%s","changeType":"created",'
        '"resource":"Users/u1/Messages/m%d","tenantId":"84bd8158-6d4d-4958-8b9f-9d6445542f95"}' % (s, i + 1)
        for i, s in enumerate(states)
    ]
    return '{"value":[' + ",".join(items) + "]}"


def sign_graph(k, ts):
    return [JSON_CT], graph_body(k), "/hooks/microsoft-graph"


def graph_tamper(h, b):
    return h, graph_body(S["microsoft-graph"], S["microsoft-graph"][:-1] + "X")


standard_set(
    "microsoft-graph",
    [S["microsoft-graph"]],
    sign_graph,
    S["microsoft-graph"],
    WRONG,
    tamper_fn=graph_tamper,
    tamper_name="second notification's clientState differs",
)
h, b, pq = sign_graph(S["microsoft-graph"], NOW)
add(
    "microsoft-graph: two notifications, both clientState match",
    "microsoft-graph",
    [S["microsoft-graph"]],
    h,
    graph_body(S["microsoft-graph"], S["microsoft-graph"]),
    "ok",
    pq,
)

# dropbox ----------------------------------------------------------------------
DROPBOX_BODY = '{"list_folder":{"accounts":["dbid:AAH4f99T0taONIb-OurWxbNQ6ywGRopQngc"]},"delta":{"users":[12345]}}'


def sign_dropbox(k, ts):
    return [("X-Dropbox-Signature", hexd(k, DROPBOX_BODY)), JSON_CT], DROPBOX_BODY, "/hooks/dropbox"


standard_set("dropbox", [S["dropbox"]], sign_dropbox, S["dropbox"], WRONG, ["X-Dropbox-Signature"])

# twilio -----------------------------------------------------------------------


def twilio_sig(token, url, form_body=None):
    data = url
    if form_body is not None:
        params = urllib.parse.parse_qsl(form_body, keep_blank_values=True)
        for name, value in sorted(params, key=lambda p: p[0]):
            data += name + value
    return b64d(token, data, hashlib.sha1)


TWILIO_URL = BASE + "/hooks/twilio"
TWILIO_FORM = "From=%2B15551230000&To=%2B15559870000&Body=Hello+there"
TWILIO_JSON = '{"AccountSid":"AC0123456789abcdef0123456789abcdef","MessageSid":"SM0123456789abcdef0123456789abcdef","MessageStatus":"delivered"}'


def sign_twilio_form(k, ts, query=None):
    url = TWILIO_URL + ("?" + query if query else "")
    pq = "/hooks/twilio" + ("?" + query if query else "")
    return (
        [
            ("X-Twilio-Signature", twilio_sig(k, url, TWILIO_FORM)),
            ("I-Twilio-Idempotency-Token", "c1f5e2a0-3d4b-4c6e-9f7a-8b9c0d1e2f3a"),
            FORM_CT,
        ],
        TWILIO_FORM,
        pq,
    )


def sign_twilio_json(k, ts):
    query = "bodySHA256=" + hashlib.sha256(TWILIO_JSON.encode()).hexdigest()
    return (
        [
            ("X-Twilio-Signature", twilio_sig(k, TWILIO_URL + "?" + query)),
            ("I-Twilio-Idempotency-Token", "0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a"),
            JSON_CT,
        ],
        TWILIO_JSON,
        "/hooks/twilio?" + query,
    )


standard_set(
    "twilio", [S["twilio"]], sign_twilio_form, S["twilio"], WRONG, ["X-Twilio-Signature"], url=TWILIO_URL, label="twilio (form)"
)
h, b, pq = sign_twilio_form(S["twilio"], NOW, query="foo=1&bar=2")
add("twilio (form): request with query ?foo=1&bar=2", "twilio", [S["twilio"]], h, b, "ok", pq, TWILIO_URL)
h, b, _ = sign_twilio_form(S["twilio"], NOW)
add(
    "twilio (form): signature made without the request's query",
    "twilio",
    [S["twilio"]],
    h,
    b,
    "mismatch",
    "/hooks/twilio?foo=1&bar=2",
    TWILIO_URL,
)
standard_set(
    "twilio",
    [S["twilio"]],
    sign_twilio_json,
    S["twilio"],
    WRONG,
    ["X-Twilio-Signature"],
    url=TWILIO_URL,
    label="twilio (json, bodySHA256)",
    tamper_name="body changed by one character, bodySHA256 and signature unchanged",
)

# sendgrid ---------------------------------------------------------------------
SENDGRID_BODY = '[{"email":"a@example.com","event":"delivered","sg_event_id":"c2VuZGdyaWQtZXZlbnQtMQ","sg_message_id":"msg1.filter0001","timestamp":1764769990}]'


def sign_sendgrid(k, ts):
    sig = b64(ecdsa_sign(k, (str(ts) + SENDGRID_BODY).encode()))
    return (
        [
            ("X-Twilio-Email-Event-Webhook-Signature", sig),
            ("X-Twilio-Email-Event-Webhook-Timestamp", str(ts)),
            JSON_CT,
        ],
        SENDGRID_BODY,
        "/hooks/sendgrid",
    )


standard_set(
    "sendgrid",
    [spki_b64(P256_KEY)],
    sign_sendgrid,
    P256_KEY,
    P256_WRONG,
    ["X-Twilio-Email-Event-Webhook-Signature"],
    tolerance=300,
)
h, b, pq = sign_sendgrid(P256_KEY, NOW)
add("sendgrid: verification key given as PEM", "sendgrid", [spki_pem(P256_KEY)], h, b, "ok", pq)

# paddle -----------------------------------------------------------------------
PADDLE_BODY = '{"event_id":"evt_01hv8x2a9p1q3r4s5t6u7v8w9x","event_type":"transaction.completed","occurred_at":"2025-12-03T13:53:20.000000Z","notification_id":"ntf_01hv8x2a9p","data":{"id":"txn_01hv8wptq8987qeep44cyrewp9","status":"completed"}}'


def sign_paddle(k, ts, extra_h1=None):
    sig = hexd(k, f"{ts}:{PADDLE_BODY}")
    v = f"ts={ts};h1={sig}" if extra_h1 is None else f"ts={ts};h1={extra_h1};h1={sig}"
    return [("Paddle-Signature", v), JSON_CT], PADDLE_BODY, "/hooks/paddle"


standard_set("paddle", [S["paddle"]], sign_paddle, S["paddle"], WRONG, ["Paddle-Signature"], tolerance=5)
h, b, pq = sign_paddle(S["paddle"], NOW, extra_h1=hexd(OLD, f"{NOW}:{PADDLE_BODY}"))
add("paddle: two h1 entries, the second matches", "paddle", [S["paddle"]], h, b, "ok", pq)
add(
    "paddle: header without ts=",
    "paddle",
    [S["paddle"]],
    [("Paddle-Signature", "h1=" + hexd(S["paddle"], f"{NOW}:{PADDLE_BODY}")), JSON_CT],
    PADDLE_BODY,
    "malformed_header",
    "/hooks/paddle",
)

# linear -----------------------------------------------------------------------


def linear_body(ts):
    return (
        '{"action":"create","type":"Issue","createdAt":"2025-12-03T13:53:20.000Z","webhookTimestamp":%d,'
        '"webhookId":"0f8b3c2e-1d4a-4b5c-8e6f-7a9b0c1d2e3f","data":{"id":"2174add1-f7c8-44e3-bbf3-2d60b5ea8bc9","title":"Fix login"}}'
        % (ts * 1000)
    )


def sign_linear(k, ts):
    body = linear_body(ts)
    return (
        [
            ("Linear-Delivery", "234d1a4e-b617-4388-90fe-adc3633d6b72"),
            ("Linear-Event", "Issue"),
            ("Linear-Signature", hexd(k, body)),
            JSON_CT,
        ],
        body,
        "/hooks/linear",
    )


standard_set("linear", [S["linear"]], sign_linear, S["linear"], WRONG, ["Linear-Signature"], tolerance=60)

# intercom ---------------------------------------------------------------------
INTERCOM_BODY = '{"type":"notification_event","app_id":"abc123","id":"notif_4ad8d3b0-1f1e-4e8c-9b0e-2a3b4c5d6e7f","topic":"conversation.user.created","created_at":1764770000,"data":{"item":{"type":"conversation","id":"1"}}}'


def sign_intercom(k, ts):
    return (
        [("X-Hub-Signature", "sha1=" + hexd(k, INTERCOM_BODY, hashlib.sha1)), JSON_CT],
        INTERCOM_BODY,
        "/hooks/intercom",
    )


standard_set("intercom", [S["intercom"]], sign_intercom, S["intercom"], WRONG, ["X-Hub-Signature"])

# square -----------------------------------------------------------------------
SQUARE_URL = BASE + "/hooks/square"
SQUARE_BODY = '{"merchant_id":"6SSW7HV8K2ST5","type":"payment.created","event_id":"13b867cf-db3d-4b1c-90b6-2f32a9d78124","created_at":"2025-12-03T13:53:20Z","data":{"type":"payment","id":"KkAkhdMs"}}'


def sign_square(k, ts, query=None, url=SQUARE_URL):
    full = url + ("?" + query if query else "")
    return (
        [("x-square-hmacsha256-signature", b64d(k, full + SQUARE_BODY)), JSON_CT],
        SQUARE_BODY,
        "/hooks/square" + ("?" + query if query else ""),
    )


standard_set(
    "square", [S["square"]], sign_square, S["square"], WRONG, ["x-square-hmacsha256-signature"], url=SQUARE_URL
)
h, b, pq = sign_square(S["square"], NOW, query="env=prod")
add("square: request with a query string", "square", [S["square"]], h, b, "ok", pq, SQUARE_URL)
h, b, pq = sign_square(S["square"], NOW, url="https://other.example.com/hooks/square")
add("square: signed for a different notification url", "square", [S["square"]], h, b, "mismatch", pq, SQUARE_URL)

# mailgun ----------------------------------------------------------------------
MG_TOKEN = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"


def mailgun_sig(k, ts, token=MG_TOKEN):
    return hexd(k, f"{ts}{token}")


def sign_mailgun_json(k, ts):
    body = (
        '{"signature":{"timestamp":"%d","token":"%s","signature":"%s"},'
        '"event-data":{"event":"delivered","id":"CPgfbmQMTCKtHW6uIWtuVe","timestamp":%d.0,"recipient":"alice@example.com"}}'
        % (ts, MG_TOKEN, mailgun_sig(k, ts), ts)
    )
    return [JSON_CT], body, "/hooks/mailgun"


def sign_mailgun_form(k, ts):
    body = (
        "timestamp=%d&token=%s&signature=%s&event=delivered&recipient=alice%%40example.com&domain=mg.example.com"
        % (ts, MG_TOKEN, mailgun_sig(k, ts))
    )
    return [FORM_CT], body, "/hooks/mailgun"


def mailgun_tamper(h, b):
    return h, b.replace(MG_TOKEN, tamper(MG_TOKEN))


standard_set(
    "mailgun",
    [S["mailgun"]],
    sign_mailgun_json,
    S["mailgun"],
    WRONG,
    tolerance=300,
    label="mailgun (json)",
    tamper_fn=mailgun_tamper,
    tamper_name="token changed by one character",
)
standard_set(
    "mailgun",
    [S["mailgun"]],
    sign_mailgun_form,
    S["mailgun"],
    WRONG,
    tolerance=300,
    label="mailgun (form)",
    tamper_fn=mailgun_tamper,
    tamper_name="token changed by one character",
)

# pagerduty --------------------------------------------------------------------
PD_BODY = '{"event":{"id":"01DEN2HDVEF2OUDYTS2MCNVPTN","event_type":"incident.triggered","resource_type":"incident","occurred_at":"2025-12-03T13:53:20.000Z","data":{"id":"PGR0VU2","type":"incident","title":"Server is on fire"}}}'


def sign_pagerduty(k, ts):
    # two entries (as during a secret rotation); only the second can match
    first = hexd(OLD, PD_BODY)
    return (
        [("X-PagerDuty-Signature", f"v1={first},v1={hexd(k, PD_BODY)}"), JSON_CT],
        PD_BODY,
        "/hooks/pagerduty",
    )


standard_set("pagerduty", [S["pagerduty"]], sign_pagerduty, S["pagerduty"], WRONG, ["X-PagerDuty-Signature"])

# typeform ---------------------------------------------------------------------
TYPEFORM_BODY = '{"event_id":"01HCZ8E5M6Q0G2E2B4Z3M0KX1V","event_type":"form_response","form_response":{"form_id":"lT4Z3j","token":"a3a12ec67a1365927098a606107fac15","submitted_at":"2025-12-03T13:53:20Z"}}'


def sign_typeform(k, ts):
    return (
        [("Typeform-Signature", "sha256=" + b64d(k, TYPEFORM_BODY)), JSON_CT],
        TYPEFORM_BODY,
        "/hooks/typeform",
    )


standard_set("typeform", [S["typeform"]], sign_typeform, S["typeform"], WRONG, ["Typeform-Signature"])

# calendly ---------------------------------------------------------------------
CALENDLY_BODY = '{"event":"invitee.created","created_at":"2025-12-03T13:53:20.000000Z","created_by":"https://api.calendly.com/users/AAAAAAAAAAAAAAAA","payload":{"email":"a@example.com","name":"Ada"}}'


def sign_calendly(k, ts):
    return (
        [("Calendly-Webhook-Signature", f"t={ts},v1={hexd(k, f'{ts}.{CALENDLY_BODY}')}"), JSON_CT],
        CALENDLY_BODY,
        "/hooks/calendly",
    )


standard_set(
    "calendly", [S["calendly"]], sign_calendly, S["calendly"], WRONG, ["Calendly-Webhook-Signature"], tolerance=180
)
add(
    "calendly: header without t=",
    "calendly",
    [S["calendly"]],
    [("Calendly-Webhook-Signature", "v1=" + hexd(S["calendly"], f"{NOW}.{CALENDLY_BODY}")), JSON_CT],
    CALENDLY_BODY,
    "malformed_header",
    "/hooks/calendly",
)

# hubspot ----------------------------------------------------------------------
HUBSPOT_URL = BASE + "/hooks/hubspot"
HUBSPOT_BODY = '[{"eventId":1,"subscriptionId":12345,"portalId":62515,"appId":54321,"occurredAt":1764769999000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW"}]'


def sign_hubspot(k, ts, query=None):
    ms = str(ts * 1000)
    full = HUBSPOT_URL + ("?" + query if query else "")
    return (
        [
            ("X-HubSpot-Signature-v3", b64d(k, "POST" + full + HUBSPOT_BODY + ms)),
            ("X-HubSpot-Request-Timestamp", ms),
            JSON_CT,
        ],
        HUBSPOT_BODY,
        "/hooks/hubspot" + ("?" + query if query else ""),
    )


standard_set(
    "hubspot",
    [S["hubspot"]],
    sign_hubspot,
    S["hubspot"],
    WRONG,
    ["X-HubSpot-Signature-v3"],
    tolerance=300,
    url=HUBSPOT_URL,
)
h, b, pq = sign_hubspot(S["hubspot"], NOW, query="portalId=62515")
add("hubspot: request with a query string", "hubspot", [S["hubspot"]], h, b, "ok", pq, HUBSPOT_URL)
b, pq = HUBSPOT_BODY, "/hooks/hubspot"
add(
    "hubspot: timestamp header in seconds instead of ms (signed as sent)",
    "hubspot",
    [S["hubspot"]],
    [
        ("X-HubSpot-Signature-v3", b64d(S["hubspot"], "POST" + HUBSPOT_URL + b + str(NOW))),
        ("X-HubSpot-Request-Timestamp", str(NOW)),
        JSON_CT,
    ],
    b,
    "timestamp",
    pq,
    HUBSPOT_URL,
)

# ----------------------------------------------------------------------------
# providers' published examples (each asserted against the published value)

# GitHub docs, "Validating webhook deliveries"
GH_PUB_SECRET = "It's a Secret to Everybody"
GH_PUB_BODY = "Hello, World!"
GH_PUB_SIG = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
assert "sha256=" + hexd(GH_PUB_SECRET, GH_PUB_BODY) == GH_PUB_SIG
add(
    "github: published example (GitHub docs)",
    "github",
    [GH_PUB_SECRET],
    [("X-GitHub-Event", "ping"), ("X-Hub-Signature-256", GH_PUB_SIG)],
    GH_PUB_BODY,
    "ok",
    "/hooks/github",
    source="published",
)

# Standard Webhooks spec / Svix docs example
SW_PUB_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SW_PUB_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SW_PUB_TS = 1614265330
SW_PUB_BODY = '{"test": 2432232314}'
SW_PUB_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
assert sw_sign_entry(SW_PUB_SECRET, SW_PUB_TS, SW_PUB_BODY, SW_PUB_ID) == SW_PUB_SIG
for scheme, prefix in (("standard-webhooks", "webhook"), ("svix", "svix")):
    add(
        f"{scheme}: published example (Standard Webhooks / Svix)",
        scheme,
        [SW_PUB_SECRET],
        [
            (f"{prefix}-id", SW_PUB_ID),
            (f"{prefix}-timestamp", str(SW_PUB_TS)),
            (f"{prefix}-signature", SW_PUB_SIG),
            JSON_CT,
        ],
        SW_PUB_BODY,
        "ok",
        f"/hooks/{scheme}",
        now=SW_PUB_TS,
        source="published",
    )

# Slack docs, "Verifying requests from Slack"
SLACK_PUB_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_PUB_TS = 1531420618
SLACK_PUB_BODY = (
    "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    "&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_PUB_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
assert slack_headers(SLACK_PUB_SECRET, SLACK_PUB_TS, SLACK_PUB_BODY)[1][1] == SLACK_PUB_SIG
add(
    "slack: published example (Slack docs, slash command)",
    "slack",
    [SLACK_PUB_SECRET],
    [
        ("X-Slack-Request-Timestamp", str(SLACK_PUB_TS)),
        ("X-Slack-Signature", SLACK_PUB_SIG),
        FORM_CT,
    ],
    SLACK_PUB_BODY,
    "ok",
    "/hooks/slack",
    now=SLACK_PUB_TS,
    source="published",
)

# Twilio docs, "Webhooks security" (validating requests)
TW_PUB_TOKEN = "12345"
TW_PUB_URL = "https://mycompany.com/myapp.php"
TW_PUB_QUERY = "foo=1&bar=2"
TW_PUB_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+12349013030"),
    ("Digits", "1234"),
    ("From", "+12349013030"),
    ("To", "+18005551212"),
]
TW_PUB_BODY = urllib.parse.urlencode(TW_PUB_PARAMS)
TW_PUB_SIG = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
assert twilio_sig(TW_PUB_TOKEN, TW_PUB_URL + "?" + TW_PUB_QUERY, TW_PUB_BODY) == TW_PUB_SIG
add(
    "twilio: published example (Twilio docs, webhooks security)",
    "twilio",
    [TW_PUB_TOKEN],
    [("X-Twilio-Signature", TW_PUB_SIG), FORM_CT],
    TW_PUB_BODY,
    "ok",
    "/myapp.php?" + TW_PUB_QUERY,
    TW_PUB_URL,
    source="published",
)

# ----------------------------------------------------------------------------
# handshakes

HANDSHAKES = []
UNAUTHORIZED = {"status": 401, "headers": [["content-type", "application/json"]], "body": '{"error":"unauthorized"}'}


def text_echo(s):
    return {
        "status": 200,
        "headers": [["content-type", "text/plain"], ["x-content-type-options", "nosniff"]],
        "body": s,
    }


def json_resp(s):
    return {"status": 200, "headers": [["content-type", "application/json"]], "body": s}


def hs(name, scheme, secrets, method, pq, headers, body, response, verify_token=None, now=NOW):
    HANDSHAKES.append(
        {
            "name": name,
            "scheme": scheme,
            "secrets": list(secrets),
            "verify_token": verify_token,
            "method": method,
            "path_and_query": pq,
            "headers": [list(h) for h in headers],
            "body": body,
            "now": now,
            "response": response,
        }
    )


# slack url_verification
SLACK_CHALLENGE = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
SLACK_HS_BODY = '{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"%s","type":"url_verification"}' % SLACK_CHALLENGE
hs(
    "slack: url_verification",
    "slack",
    [S["slack"]],
    "POST",
    "/hooks/slack",
    slack_headers(S["slack"], NOW, SLACK_HS_BODY) + [JSON_CT],
    SLACK_HS_BODY,
    json_resp('{"challenge":"%s"}' % SLACK_CHALLENGE),
)
hs(
    "slack: url_verification with a bad signature",
    "slack",
    [S["slack"]],
    "POST",
    "/hooks/slack",
    slack_headers(WRONG, NOW, SLACK_HS_BODY) + [JSON_CT],
    SLACK_HS_BODY,
    UNAUTHORIZED,
)

# zoom endpoint.url_validation
ZOOM_PLAIN = "qgg8vlvZRS6UYooatFL8Aw"
ZOOM_HS_BODY = '{"payload":{"plainToken":"%s"},"event_ts":1654503849680,"event":"endpoint.url_validation"}' % ZOOM_PLAIN
hs(
    "zoom: url validation",
    "zoom",
    [S["zoom"]],
    "POST",
    "/hooks/zoom",
    zoom_headers(S["zoom"], NOW, ZOOM_HS_BODY) + [JSON_CT],
    ZOOM_HS_BODY,
    json_resp('{"plainToken":"%s","encryptedToken":"%s"}' % (ZOOM_PLAIN, hexd(S["zoom"], ZOOM_PLAIN))),
)
hs(
    "zoom: url validation with a bad signature",
    "zoom",
    [S["zoom"]],
    "POST",
    "/hooks/zoom",
    zoom_headers(WRONG, NOW, ZOOM_HS_BODY) + [JSON_CT],
    ZOOM_HS_BODY,
    UNAUTHORIZED,
)

# meta verification GET
META_VT = "meta-verify-token-hookyard"
META_CHALLENGE = "1158201444"
hs(
    "meta: subscribe verification",
    "meta",
    [S["meta"]],
    "GET",
    f"/hooks/meta?hub.mode=subscribe&hub.verify_token={META_VT}&hub.challenge={META_CHALLENGE}",
    [],
    "",
    text_echo(META_CHALLENGE),
    verify_token=META_VT,
)
hs(
    "meta: wrong verify_token",
    "meta",
    [S["meta"]],
    "GET",
    f"/hooks/meta?hub.mode=subscribe&hub.verify_token=not-the-token&hub.challenge={META_CHALLENGE}",
    [],
    "",
    UNAUTHORIZED,
    verify_token=META_VT,
)
hs(
    "meta: mode is not subscribe",
    "meta",
    [S["meta"]],
    "GET",
    f"/hooks/meta?hub.mode=unsubscribe&hub.verify_token={META_VT}&hub.challenge={META_CHALLENGE}",
    [],
    "",
    UNAUTHORIZED,
    verify_token=META_VT,
)

# x CRC
X_CRC = "FVnYdHq0bOE2s9wLz6kXxP-7u_Qm3aTr+cJ8gN1e/iY="
hs(
    "x: crc challenge",
    "x",
    [S["x"]],
    "GET",
    "/hooks/x?crc_token=" + urllib.parse.quote(X_CRC, safe=""),
    [],
    "",
    json_resp('{"response_token":"sha256=%s"}' % b64d(S["x"], X_CRC)),
)
hs(
    "x: crc_token with characters outside [A-Za-z0-9+/=_-]",
    "x",
    [S["x"]],
    "GET",
    "/hooks/x?crc_token=" + urllib.parse.quote('{"a":1}', safe=""),
    [],
    "",
    UNAUTHORIZED,
)
hs(
    "x: crc_token longer than 256 characters",
    "x",
    [S["x"]],
    "GET",
    "/hooks/x?crc_token=" + "A" * 257,
    [],
    "",
    UNAUTHORIZED,
)

# microsoft-graph validationToken
GRAPH_TOKEN = "Validation: Testing client application reachability for subscription Request-Id: 1f7e5a3c-9b2d-4e6f-8a0b-c1d2e3f4a5b6"
GRAPH_HS_HEADERS = [("content-type", "text/plain; charset=utf-8")]
hs(
    "microsoft-graph: validationToken echo",
    "microsoft-graph",
    [S["microsoft-graph"]],
    "POST",
    "/hooks/microsoft-graph?validationToken=" + urllib.parse.quote(GRAPH_TOKEN, safe=""),
    GRAPH_HS_HEADERS,
    "",
    text_echo(GRAPH_TOKEN),
)
XSS = "<script>alert(1)</script>"
hs(
    "microsoft-graph: script token echoed as inert text/plain",
    "microsoft-graph",
    [S["microsoft-graph"]],
    "POST",
    "/hooks/microsoft-graph?validationToken=" + urllib.parse.quote(XSS, safe=""),
    GRAPH_HS_HEADERS,
    "",
    text_echo(XSS),
)

# dropbox challenge
DROPBOX_CHALLENGE = "nN7bD2cZJk3vL0qR8sT4uW6xY1aE5fGh"
hs(
    "dropbox: challenge echo",
    "dropbox",
    [S["dropbox"]],
    "GET",
    "/hooks/dropbox?challenge=" + DROPBOX_CHALLENGE,
    [],
    "",
    text_echo(DROPBOX_CHALLENGE),
)
hs(
    "dropbox: script challenge echoed as inert text/plain",
    "dropbox",
    [S["dropbox"]],
    "GET",
    "/hooks/dropbox?challenge=" + urllib.parse.quote(XSS, safe=""),
    [],
    "",
    text_echo(XSS),
)


# ----------------------------------------------------------------------------
# reference verifier: re-checks every case's expectation (second look at the
# generator's own output; written from the spec table, one branch per preset)

TOL = {
    "stripe": 300,
    "slack": 300,
    "standard-webhooks": 300,
    "svix": 300,
    "zoom": 300,
    "sendgrid": 300,
    "paddle": 5,
    "linear": 60,
    "mailgun": 300,
    "calendly": 180,
    "hubspot": 300,
}


class Fail(Exception):
    pass


def ref_verify(c):
    hdr = {}
    for n, v in c["headers"]:
        hdr.setdefault(n.lower(), v)
    body, now, secrets, scheme = c["body"], c["now"], c["secrets"], c["scheme"]
    tol = TOL.get(scheme)

    def need(name):
        if name.lower() not in hdr:
            raise Fail("missing_header")
        return hdr[name.lower()]

    def fresh(ts_text, scale=1):
        try:
            ts = int(ts_text)
        except ValueError:
            raise Fail("malformed_header")
        if abs(now - ts / scale) > tol:
            raise Fail("timestamp")

    def anyeq(cands, fn):
        for s in secrets:
            want = fn(s)
            if any(hmac.compare_digest(want, x) for x in cands):
                return
        raise Fail("mismatch")

    def kv(text, sep):
        out = []
        for part in text.split(sep):
            k, eq, v = part.strip().partition("=")
            if not eq:
                raise Fail("malformed_header")
            out.append((k, v))
        return out

    def full_url():
        q = c["path_and_query"].partition("?")[2]
        return c["url"] + ("?" + q if q else "")

    if scheme in ("github", "meta"):
        v = need("X-Hub-Signature-256")
        anyeq([v], lambda s: "sha256=" + hexd(s, body))
    elif scheme == "gitlab":
        v = need("X-Gitlab-Token")
        anyeq([v], lambda s: s)
    elif scheme == "bitbucket":
        anyeq([need("X-Hub-Signature")], lambda s: "sha256=" + hexd(s, body))
    elif scheme in ("stripe", "calendly"):
        pairs = kv(need("Stripe-Signature" if scheme == "stripe" else "Calendly-Webhook-Signature"), ",")
        ts = [v for k, v in pairs if k == "t"]
        if not ts:
            raise Fail("malformed_header")
        fresh(ts[0])
        anyeq([v for k, v in pairs if k == "v1"], lambda s: hexd(s, f"{ts[0]}.{body}"))
    elif scheme == "shopify":
        anyeq([need("X-Shopify-Hmac-Sha256")], lambda s: b64d(s, body))
    elif scheme in ("slack", "zoom"):
        sig_h, ts_h = ("X-Slack-Signature", "X-Slack-Request-Timestamp") if scheme == "slack" else ("x-zm-signature", "x-zm-request-timestamp")
        sig, ts = need(sig_h), need(ts_h)
        fresh(ts)
        anyeq([sig], lambda s: "v0=" + hexd(s, f"v0:{ts}:{body}"))
    elif scheme in ("standard-webhooks", "svix"):
        p = "webhook" if scheme == "standard-webhooks" else "svix"
        sig, ts, mid = need(p + "-signature"), need(p + "-timestamp"), need(p + "-id")
        fresh(ts)
        content = f"{mid}.{ts}.{body}".encode()
        entries = [e.partition(",") for e in sig.split(" ")]
        for s in secrets:
            for ver, _, val in entries:
                if s.startswith("whsec_") and ver == "v1":
                    if hmac.compare_digest(val, b64d(base64.b64decode(s[6:]), content)):
                        return "ok"
                if s.startswith("whpk_") and ver == "v1a":
                    pk = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(s[5:]))
                    try:
                        pk.verify(base64.b64decode(val), content)
                        return "ok"
                    except Exception:
                        pass
        raise Fail("mismatch")
    elif scheme == "x":
        anyeq([need("x-twitter-webhooks-signature")], lambda s: "sha256=" + b64d(s, body))
    elif scheme == "microsoft-graph":
        vals = json.loads(body)["value"]
        if not any(all(v.get("clientState") == s for v in vals) for s in secrets):
            raise Fail("mismatch")
    elif scheme == "dropbox":
        anyeq([need("X-Dropbox-Signature")], lambda s: hexd(s, body))
    elif scheme == "twilio":
        sig = need("X-Twilio-Signature")
        url = full_url()
        if hdr.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            anyeq([sig], lambda s: twilio_sig(s, url, body))
        else:
            q = dict(urllib.parse.parse_qsl(c["path_and_query"].partition("?")[2]))
            if q.get("bodySHA256") != hashlib.sha256(body.encode()).hexdigest():
                raise Fail("mismatch")
            anyeq([sig], lambda s: twilio_sig(s, url))
    elif scheme == "sendgrid":
        sig = need("X-Twilio-Email-Event-Webhook-Signature")
        ts = need("X-Twilio-Email-Event-Webhook-Timestamp")
        fresh(ts)
        for s in secrets:
            if s.startswith("-----BEGIN"):
                pk = serialization.load_pem_public_key(s.encode())
            else:
                pk = serialization.load_der_public_key(base64.b64decode(s))
            try:
                pk.verify(base64.b64decode(sig), (ts + body).encode(), ec.ECDSA(hashes.SHA256()))
                return "ok"
            except Exception:
                pass
        raise Fail("mismatch")
    elif scheme == "paddle":
        pairs = kv(need("Paddle-Signature"), ";")
        ts = [v for k, v in pairs if k == "ts"]
        if not ts:
            raise Fail("malformed_header")
        fresh(ts[0])
        anyeq([v for k, v in pairs if k == "h1"], lambda s: hexd(s, f"{ts[0]}:{body}"))
    elif scheme == "linear":
        sig = need("Linear-Signature")
        anyeq([sig], lambda s: hexd(s, body))
        fresh(str(json.loads(body)["webhookTimestamp"]), 1000)
    elif scheme == "intercom":
        anyeq([need("X-Hub-Signature")], lambda s: "sha1=" + hexd(s, body, hashlib.sha1))
    elif scheme == "square":
        anyeq([need("x-square-hmacsha256-signature")], lambda s: b64d(s, full_url() + body))
    elif scheme == "mailgun":
        if hdr.get("content-type", "").startswith("application/json"):
            sig = json.loads(body)["signature"]
        else:
            sig = dict(urllib.parse.parse_qsl(body))
        fresh(sig["timestamp"])
        anyeq([sig["signature"]], lambda s: hexd(s, sig["timestamp"] + sig["token"]))
    elif scheme == "pagerduty":
        pairs = kv(need("X-PagerDuty-Signature"), ",")
        anyeq([v for k, v in pairs if k == "v1"], lambda s: hexd(s, body))
    elif scheme == "typeform":
        anyeq([need("Typeform-Signature")], lambda s: "sha256=" + b64d(s, body))
    elif scheme == "hubspot":
        sig, ts = need("X-HubSpot-Signature-v3"), need("X-HubSpot-Request-Timestamp")
        fresh(ts, 1000)
        anyeq([sig], lambda s: b64d(s, c["method"] + full_url() + body + ts))
    else:
        raise AssertionError("unknown scheme " + scheme)
    return "ok"


def ref_result(c):
    try:
        return ref_verify(c)
    except Fail as e:
        return str(e)


PRESETS = [
    "github", "gitlab", "bitbucket", "stripe", "shopify", "slack", "standard-webhooks", "svix", "zoom",
    "meta", "x", "microsoft-graph", "dropbox", "twilio", "sendgrid", "paddle", "linear", "intercom",
    "square", "mailgun", "pagerduty", "typeform", "calendly", "hubspot",
]  # fmt: skip


def self_check():
    names = set()
    for c in CASES:
        assert c["name"] not in names, "duplicate name " + c["name"]
        names.add(c["name"])
        got = ref_result(c)
        assert got == c["expect"], f"{c['name']}: reference verifier says {got}, case expects {c['expect']}"
    for scheme in PRESETS:
        expects = {c["expect"] for c in CASES if c["scheme"] == scheme}
        assert {"ok", "mismatch"} <= expects, scheme
        if scheme in TOL:
            assert "timestamp" in expects, scheme
    assert {c["scheme"] for c in CASES} == set(PRESETS)
    assert len({h["name"] for h in HANDSHAKES}) == len(HANDSHAKES)


def main():
    self_check()
    out = {
        "now": NOW,
        "cases": sorted(CASES, key=lambda c: (c["scheme"], c["name"])),
        "handshakes": sorted(HANDSHAKES, key=lambda h: (h["scheme"], h["name"])),
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
