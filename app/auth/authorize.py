"""The authorization endpoint and its pages (RFC 6749 §3.1, §4.1; SMART App Launch 2.2
§"Authorization code", "Launch context"; plan §6, §7).

Routes (the issuer is `http://<host>/auth`, `routes_token.AuthUrls`):

- `GET|POST {issuer}/authorize` — SMART `authorize-post`: the same parameters as a query or a
  form. Checked here: `client_id` known and registered for the code flow, `redirect_uri` an exact
  registered string (missing only when exactly one is registered) — otherwise an error page and
  never a redirect, since the redirect target is not trusted; `aud` equal to the FHIR base URL
  (otherwise an error page: the request may be forged to leak a code to another server);
  `state` required; `launch` (EHR launch) an unused, unexpired launch of this client. Then
  Authlib's code grant validates `response_type=code`, PKCE S256 and OIDC (`grants.py`); its
  errors go back to the app as `error=…&state=…`. The request is parked for 10 minutes and the
  browser goes to `{issuer}/approve?req=<id>` (or the sign-in page first).
- `GET|POST {issuer}/login` — sign-in: `username`, `password` (argon2id, `passwords.py`),
  throttled per user and address (`throttle.py`), one message for every failure.
- `GET|POST {issuer}/approve` — the approval page: each clinical scope in plain words as a
  ticked checkbox `scope` (unticked = not granted), a patient picker (`patient`) for a
  practitioner's standalone launch that needs a patient, an encounter picker (`encounter`) for
  `launch/encounter`; `decision=approve|deny`. Approval replays the parked request through
  Authlib with the approved scope, which stores the code and redirects to the app.
- `GET|POST {issuer}/logout`, `GET|POST {issuer}/manage` (the user's grants, revocable; SMART
  `management_endpoint`), `GET {issuer}/style.json` (`smart_style_url`), the stylesheet.

Every form carries a CSRF token (`sessions.Csrf`) and every POST is refused when its `Origin`
is not ours. Page forms are parsed as urlencoded (repeated `scope` allowed), 64 kB at most.

Records of each decision (`app/consent`): an approval with a patient in context writes the
active Consent naming the app, the granted and the deselected scopes (`consent/records.py`)
BEFORE the code is issued — if it cannot be written the user gets an error page and the app no
code; a denial writes a rejected Consent; a grant revoked on `/manage` gets the inactive
version of its Consent. Each approval, denial and revocation is also an authorization event of
the audit trail (`routes_token.record_auth_event`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import OAuth2Error
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, RedirectResponse

from app.auth.clients import resolve_redirect_uri
from app.auth.grants import (
    Approval,
    FormRequest,
    SmartAuthorizationServer,
    build_server,
    grant_expiry,
    new_grant_id,
    origin_of,
    user_scope,
)
from app.auth.keys import Keyring
from app.auth.launch import (
    Choice,
    create_launch,
    encounter_patient,
    list_encounters,
    list_patients,
    patient_exists,
    take_launch,
)
from app.auth.pages import STATIC, Pages, choose_lang
from app.auth.passwords import Passwords
from app.auth.rfc7523_backend import JwksFetcher
from app.auth.routes_token import (
    AuthUrls,
    client_address,
    read_body,
    record_auth_event,
    record_grant_revoked,
)
from app.auth.scopes import (
    ClinicalScope,
    ScopeSet,
    describe,
    needs_encounter_context,
    needs_patient_context,
)
from app.auth.sessions import (
    PRE_SESSION_COOKIE,
    SESSION_COOKIE,
    Csrf,
    cookie_options,
    current_session,
    new_secret_value,
    open_session,
    origin_allowed,
    pre_session_binding,
)
from app.auth.store import AuthRequest, AuthStore, Client, Grant, Session, User
from app.auth.throttle import WINDOW_SECONDS, LoginThrottle
from app.config import Settings
from app.consent.smart import SmartConsents
from app.fhir.interactions import FhirService

log = logging.getLogger("yilian.auth.authorize")

REQUEST_SECONDS = 600
PURGE_ONE_IN = 50
MAX_PAGE_FORM_BYTES = 65_536
MAX_PAGE_FORM_FIELDS = 256
FORM_TYPE = "application/x-www-form-urlencoded"
# Authorization request parameters kept for the approval step (RFC 6749 §4.1.1, RFC 7636 §4.3,
# OIDC Core §3.1.2.1, SMART `aud`/`launch`); anything else is ignored.
KEPT_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "aud",
               "code_challenge", "code_challenge_method", "nonce", "prompt", "max_age")
NEXT_PAGES = ("ehr", "manage")
# Granular choices on the approval page (plan §6; ONC (g)(10) "granular scope selection"): a
# resource-level Observation or Condition scope can be narrowed by the user to categories.
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CATEGORY_CHOICES: dict[str, tuple[str, ...]] = {
    "Observation": tuple(f"{OBSERVATION_CATEGORY}|{c}" for c in (
        "laboratory", "vital-signs", "social-history", "survey", "imaging", "exam",
        "procedure", "therapy", "activity")),
    "Condition": tuple(f"{CONDITION_CATEGORY}|{c}" for c in (
        "problem-list-item", "encounter-diagnosis")),
}
STYLE: dict[str, Any] = {  # SMART App Launch 2.2 §"Styling"
    "color_background": "#f5f7fa", "color_error": "#b42318", "color_highlight": "#0b5394",
    "color_modal_backdrop": "", "color_success": "#1a7f37", "color_text": "#1f2933",
    "dim_border_radius": "6px", "dim_font_size": "16px", "dim_spacing_size": "16px",
    "font_family_body": "system-ui, 'PingFang SC', 'Microsoft YaHei', sans-serif",
    "font_family_heading": "system-ui, 'PingFang SC', 'Microsoft YaHei', sans-serif",
}

StoreGetter = Callable[[Request], AuthStore | None]
FetcherGetter = Callable[[Request], JwksFetcher | None]


class PageError(Exception):
    """Show an error page (reason key of `pages.ERRORS`)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


async def read_page_form(request: Request) -> list[tuple[str, str]]:
    """A page's urlencoded form, repeated names allowed; PageError otherwise."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != FORM_TYPE:
        raise PageError("bad_request")
    body = await read_body(request, MAX_PAGE_FORM_BYTES, PageError("bad_request", 413))
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                         errors="strict", max_num_fields=MAX_PAGE_FORM_FIELDS)
    except ValueError:
        raise PageError("bad_request") from None


def _single(pairs: list[tuple[str, str]]) -> dict[str, str] | None:
    """Parameters sent at most once, blank ones dropped; None when one was repeated."""
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            return None
        seen.add(name)
        if value:
            out[name] = value
    return out


def category_choices(scope: ClinicalScope) -> list[ClinicalScope]:
    """The category-restricted forms of a resource-level Observation/Condition scope."""
    if scope.query or scope.resource_type not in CATEGORY_CHOICES:
        return []
    return [ClinicalScope(scope.context, scope.resource_type, scope.permissions,
                          (("category", value),))
            for value in CATEGORY_CHOICES[scope.resource_type]]


def chosen_scopes(requested: ScopeSet, ticked: set[str]) -> ScopeSet:
    """What the user approved: the requested scopes ticked whole, and the offered category
    forms ticked while their whole scope was not; nothing that was not offered."""
    chosen: list[ClinicalScope] = []
    for scope in requested.clinical:
        if str(scope) in ticked:
            chosen.append(scope)
        else:
            chosen.extend(c for c in category_choices(scope) if str(c) in ticked)
    return ScopeSet.of(chosen, requested.other)


def _redirect_error(redirect_uri: str, error: str, description: str,
                    state: str | None) -> Response:
    params = [("error", error), ("error_description", description)]
    if state:
        params.append(("state", state))
    return RedirectResponse(add_params_to_uri(redirect_uri, params), status_code=303,
                            headers={"Cache-Control": "no-store"})


def build_authorize_router(keyring: Keyring, settings: Settings, *, service: FhirService,
                           store: StoreGetter, jwks_fetcher: FetcherGetter,
                           clock: Callable[[], float] = time.time) -> APIRouter:
    urls = AuthUrls.from_base_url(settings.base_url)
    issuer_path = urlsplit(urls.issuer).path or "/"
    issuer_origin = origin_of(urls.issuer)
    secure = urls.issuer.startswith("https://")
    idle = settings.session_idle_minutes * 60.0
    pages = Pages(urls.issuer + "/static")
    consents = SmartConsents(service)
    router = APIRouter()
    passwords: list[Passwords] = []  # made on first sign-in: hashing a dummy costs ~50 ms

    def password_checker() -> Passwords:
        if not passwords:
            passwords.append(Passwords())
        return passwords[0]

    def url(name: str) -> str:
        return f"{urls.issuer}/{name}"

    def server_for(auth_store: AuthStore, request: Request) -> SmartAuthorizationServer:
        return build_server(store=auth_store, keyring=keyring, issuer=urls.issuer,
                            fhir_base=urls.fhir_base, settings=settings,
                            jwks_fetcher=jwks_fetcher(request), clock=clock)

    def open_store(request: Request) -> AuthStore:
        auth_store = store(request)
        if auth_store is None:
            raise PageError("unavailable", 503)
        return auth_store

    async def guarded(request: Request,
                      handler: Callable[[AuthStore], Awaitable[Response]]) -> Response:
        """Run a page handler: PageError → error page; anything unexpected → 503 page."""
        try:
            return await handler(open_store(request))
        except PageError as exc:
            return pages.error(request, exc.reason, exc.status)
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return pages.error(request, "unavailable", 503)

    def live_session(auth_store: AuthStore, request: Request) -> Session | None:
        session = current_session(auth_store, request.cookies, idle, clock())
        if session is None:
            return None
        user = auth_store.get_user(session.username)
        if user is None or user.disabled or user.fhir_user != session.fhir_user:
            auth_store.delete_session(session.session_hash)  # disabled or changed since
            return None
        return session

    async def session_of(auth_store: AuthStore, request: Request) -> Session | None:
        return await run_in_threadpool(live_session, auth_store, request)

    def csrf_of(auth_store: AuthStore) -> Csrf:
        return Csrf(auth_store.server_secret())

    async def checked_post(request: Request, auth_store: AuthStore, form_name: str,
                           *binding: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """Origin + CSRF checks of a page POST; the form (single values, all pairs)."""
        if not origin_allowed(request.headers, issuer_origin):
            raise PageError("csrf", 403)
        pairs = await read_page_form(request)
        form = {k: v for k, v in pairs}
        csrf = await run_in_threadpool(csrf_of, auth_store)
        if not csrf.check(form.get("csrf"), form_name, *binding):
            raise PageError("csrf", 403)
        return form, pairs

    # -- authorization endpoint ------------------------------------------------------------

    async def authorize(request: Request) -> Response:
        async def handle(auth_store: AuthStore) -> Response:
            if request.method == "POST":
                # SMART authorize-post: a cross-site form from the app, so no Origin check;
                # nothing is decided here without the signed-in user's CSRF-checked approval
                pairs = await read_page_form(request)
            else:
                try:
                    pairs = parse_qsl(request.url.query, keep_blank_values=True,
                                      max_num_fields=MAX_PAGE_FORM_FIELDS)
                except ValueError:
                    raise PageError("bad_request") from None
            params = _single(pairs)
            if params is None:
                raise PageError("bad_request")
            client_id = params.get("client_id", "")
            client = await run_in_threadpool(auth_store.get_client, client_id) \
                if client_id else None
            if client is None:
                raise PageError("unknown_client")
            if "authorization_code" not in client.grant_types:
                raise PageError("no_code_flow")
            redirect_uri = resolve_redirect_uri(client, params.get("redirect_uri"))
            if redirect_uri is None:
                raise PageError("bad_redirect")
            if params.get("aud", "").rstrip("/") != urls.fhir_base:
                raise PageError("bad_aud")
            state = params.get("state")
            if not state:
                return _redirect_error(redirect_uri, "invalid_request", "state is required",
                                       None)
            kept = {k: params[k] for k in KEPT_PARAMS if k in params}
            server = server_for(auth_store, request)
            oauth_request = FormRequest("GET", url("authorize"), request.headers, kept)
            try:
                await run_in_threadpool(server.get_consent_grant, oauth_request)
            except OAuth2Error as exc:
                return _redirect_error(redirect_uri, exc.error, exc.get_error_description()
                                       or exc.error, state)
            launch = None
            if "launch" in params:
                launch = await run_in_threadpool(take_launch, auth_store, params["launch"],
                                                 client.client_id, clock())
                if launch is None:
                    return _redirect_error(redirect_uri, "invalid_request", "launch is "
                                           "unknown, expired, used or another app's", state)
            parked = AuthRequest(
                request_id=secrets.token_urlsafe(24), client_id=client.client_id,
                params=kept, expires=clock() + REQUEST_SECONDS,
                launch_username=launch.username if launch else None,
                launch_patient=launch.patient if launch else None,
                launch_encounter=launch.encounter if launch else None,
                ehr_launch=launch is not None)
            await run_in_threadpool(auth_store.add_auth_request, parked)
            if secrets.randbelow(PURGE_ONE_IN) == 0:  # expired auth rows go now and then
                await run_in_threadpool(auth_store.purge, clock(), WINDOW_SECONDS)
            return RedirectResponse(f"{url('approve')}?req={parked.request_id}",
                                    status_code=303, headers={"Cache-Control": "no-store"})
        return await guarded(request, handle)

    router.add_api_route("/auth/authorize", authorize, methods=["GET", "POST"],
                         include_in_schema=False)

    # -- sign-in / sign-out ----------------------------------------------------------------

    def parked_request(auth_store: AuthStore, request_id: str | None) -> AuthRequest:
        if not request_id or len(request_id) > 64:
            raise PageError("expired_request")
        parked = auth_store.get_auth_request(request_id)
        if parked is None or parked.expires <= clock():
            raise PageError("expired_request")
        return parked

    def app_name(client: Client | None, request: Request) -> str:
        if client is None:
            return ""
        return client.name_en if pages_lang(request) == "en" else client.name_zh

    def pages_lang(request: Request) -> str:
        return choose_lang(request)

    async def login_page(request: Request, auth_store: AuthStore, *, req: str | None,
                         nxt: str | None, failed: bool = False, username: str = "",
                         status: int = 200) -> Response:
        pre = request.cookies.get(PRE_SESSION_COOKIE)
        new_pre = None
        if not pre or pre_session_binding(request.cookies) is None:
            new_pre = pre = new_secret_value()
        binding = pre_session_binding({PRE_SESSION_COOKIE: pre})
        assert binding is not None
        csrf = (await run_in_threadpool(csrf_of, auth_store)).token("login", binding)
        client = None
        if req:
            parked = await run_in_threadpool(auth_store.get_auth_request, req)
            if parked is not None:
                client = await run_in_threadpool(auth_store.get_client, parked.client_id)
        response = pages.render(request, "login.html", status=status, action=url("login"),
                                csrf=csrf, req=req or "", next=nxt or "", failed=failed,
                                username=username, app_name=app_name(client, request))
        if new_pre is not None:
            response.set_cookie(PRE_SESSION_COOKIE, new_pre,
                                **cookie_options(secure, issuer_path, max_age=3600))
        return response

    async def login(request: Request) -> Response:
        async def handle(auth_store: AuthStore) -> Response:
            if request.method == "GET":
                req = request.query_params.get("req")
                nxt = request.query_params.get("next")
                return await login_page(request, auth_store, req=req,
                                        nxt=nxt if nxt in NEXT_PAGES else None)
            binding = pre_session_binding(request.cookies)
            if binding is None:
                raise PageError("csrf", 403)
            form, _ = await checked_post(request, auth_store, "login", binding)
            req = form.get("req") or None
            nxt = form.get("next") if form.get("next") in NEXT_PAGES else None
            username = form.get("username", "")[:256]
            password = form.get("password", "")[:1024]
            address = request.client.host if request.client else "unknown"
            throttle = LoginThrottle(auth_store, clock)
            verdict = await run_in_threadpool(throttle.check, username, address)
            user: User | None = None
            ok = False
            checker = await run_in_threadpool(password_checker)
            if verdict.allowed and username and password:
                user = await run_in_threadpool(auth_store.get_user, username)
                ok = await checker.verify_in_thread(
                    user.password_hash if user is not None else None, password)
                ok = ok and user is not None and not user.disabled
            elif username and password:
                # a locked-out attempt costs the same time as a checked one
                await checker.verify_in_thread(None, password)
            if not ok or user is None:
                if verdict.allowed:
                    await run_in_threadpool(throttle.failure, username, address)
                log.info("sign-in failed")
                return await login_page(request, auth_store, req=req, nxt=nxt, failed=True,
                                        username=username)
            await run_in_threadpool(throttle.success, username)
            if checker.needs_rehash(user.password_hash):
                new_hash = await checker.hash_in_thread(password)
                await run_in_threadpool(auth_store.set_password_hash, user.username, new_hash)
            value = await run_in_threadpool(open_session, auth_store, user, clock())
            target = (f"{url('approve')}?req={req}" if req else url(nxt or "manage"))
            response = RedirectResponse(target, status_code=303,
                                        headers={"Cache-Control": "no-store"})
            response.set_cookie(SESSION_COOKIE, value, **cookie_options(secure, issuer_path))
            response.delete_cookie(PRE_SESSION_COOKIE, path=issuer_path)
            log.info("user %s signed in", user.username)
            return response
        return await guarded(request, handle)

    router.add_api_route("/auth/login", login, methods=["GET", "POST"], include_in_schema=False)

    async def logout(request: Request) -> Response:
        async def handle(auth_store: AuthStore) -> Response:
            session = await session_of(auth_store, request)
            if request.method == "GET" or session is None:
                if session is None:
                    return pages.render(request, "logout.html", done=True)
                csrf = (await run_in_threadpool(csrf_of, auth_store)).token(
                    "logout", session.session_hash)
                return pages.render(request, "logout.html", done=False, csrf=csrf,
                                    action=url("logout"))
            await checked_post(request, auth_store, "logout", session.session_hash)
            await run_in_threadpool(auth_store.delete_session, session.session_hash)
            response = pages.render(request, "logout.html", done=True)
            response.delete_cookie(SESSION_COOKIE, path=issuer_path)
            return response
        return await guarded(request, handle)

    router.add_api_route("/auth/logout", logout, methods=["GET", "POST"],
                         include_in_schema=False)

    # -- approval --------------------------------------------------------------------------

    def is_patient_user(session: Session) -> bool:
        return session.fhir_user.startswith("Patient/")

    def own_patient(session: Session) -> str | None:
        return session.fhir_user.split("/", 1)[1] if is_patient_user(session) else None

    async def approval_page(request: Request, auth_store: AuthStore, parked: AuthRequest,
                            session: Session) -> Response:
        client = await run_in_threadpool(auth_store.get_client, parked.client_id)
        if client is None:
            raise PageError("unknown_client")
        requested = user_scope(parked.params.get("scope"), client.scope)
        lang_key = choose_lang(request)
        patients: list[Choice] | None = None
        encounters: list[Choice] | None = None
        if not parked.ehr_launch:
            if is_patient_user(session):
                if needs_encounter_context(requested):
                    encounters = await list_encounters(service, own_patient(session))
            else:
                if needs_patient_context(requested):
                    query = request.query_params.get("q") or ""
                    patients = await list_patients(service, query)
                    if not patients and not query:
                        raise PageError("no_patient")
                if needs_encounter_context(requested):
                    encounters = await list_encounters(service)
        csrf = (await run_in_threadpool(csrf_of, auth_store)).token(
            "approve", session.session_hash, parked.request_id)
        redirect_uri = resolve_redirect_uri(client, parked.params.get("redirect_uri")) or ""
        clinical = [{"value": str(s), "text": describe(s, lang_key),
                     "subs": [{"value": str(c), "text": describe(c, lang_key)}
                              for c in category_choices(s)]}
                    for s in requested.clinical]
        other = [{"text": describe(s, lang_key)} for s in requested.tokens()
                 if s in requested.other]
        return pages.render(
            request, "approve.html", form_action=[origin_of(redirect_uri)],
            action=url("approve"), csrf=csrf, req=parked.request_id,
            username=session.username, app_name=app_name(client, request),
            redirect_host=urlsplit(redirect_uri).netloc, clinical=clinical, other=other,
            patients=patients, encounters=encounters,
            patient_query=request.query_params.get("q") or "")

    async def approve(request: Request) -> Response:
        async def handle(auth_store: AuthStore) -> Response:
            if request.method == "GET":
                req = request.query_params.get("req")
                parked = await run_in_threadpool(parked_request, auth_store, req)
                session = await session_of(auth_store, request)
                if session is None:
                    return RedirectResponse(f"{url('login')}?req={parked.request_id}",
                                            status_code=303,
                                            headers={"Cache-Control": "no-store"})
                if parked.launch_username is not None and \
                        parked.launch_username != session.username:
                    raise PageError("wrong_user", 403)
                return await approval_page(request, auth_store, parked, session)
            if not origin_allowed(request.headers, issuer_origin):
                raise PageError("csrf", 403)
            pairs = await read_page_form(request)
            form = {k: v for k, v in pairs}
            parked = await run_in_threadpool(parked_request, auth_store, form.get("req"))
            session = await session_of(auth_store, request)
            if session is None:
                raise PageError("not_signed_in", 403)
            csrf = await run_in_threadpool(csrf_of, auth_store)
            if not csrf.check(form.get("csrf"), "approve", session.session_hash,
                              parked.request_id):
                raise PageError("csrf", 403)
            if parked.launch_username is not None and \
                    parked.launch_username != session.username:
                raise PageError("wrong_user", 403)
            return await decide(request, auth_store, parked, session, form, pairs)
        return await guarded(request, handle)

    async def decide(request: Request, auth_store: AuthStore, parked: AuthRequest,
                     session: Session, form: dict[str, str],
                     pairs: list[tuple[str, str]]) -> Response:
        client = await run_in_threadpool(auth_store.get_client, parked.client_id)
        if client is None:
            raise PageError("unknown_client")
        redirect_uri = resolve_redirect_uri(client, parked.params.get("redirect_uri"))
        if redirect_uri is None:
            raise PageError("bad_redirect")
        state = parked.params.get("state")
        await run_in_threadpool(auth_store.delete_auth_request, parked.request_id)
        requested = user_scope(parked.params.get("scope"), client.scope)
        if form.get("decision") != "approve":
            log.info("user %s denied client %s", session.username, client.client_id)
            await record_denial(request, parked, session, client, requested, form)
            return _redirect_error(redirect_uri, "access_denied",
                                   "the user did not allow access", state)
        approved = chosen_scopes(requested, {v for k, v in pairs if k == "scope"})
        patient, encounter = await launch_context(parked, session, approved, form)
        server = server_for(auth_store, request)
        now = clock()
        approval = Approval(username=session.username, fhir_user=session.fhir_user,
                            session_hash=session.session_hash, patient=patient,
                            encounter=encounter, ehr_launch=parked.ehr_launch,
                            auth_time=session.created, grant_id=new_grant_id(),
                            granted_at=now,
                            expires=grant_expiry(approved, now,
                                                 offline_seconds=server.offline_refresh_seconds,
                                                 session_seconds=server.session_seconds))
        params = {**parked.params, "scope": approved.to_string()}
        oauth_request = FormRequest("GET", url("authorize"), request.headers, params)

        def validate() -> None:
            server.get_authorization_grant(oauth_request).validate_authorization_request()

        def issue() -> tuple[int, Any, list[tuple[str, str]]]:
            grant = server.get_authorization_grant(oauth_request)
            result: tuple[int, Any, list[tuple[str, str]]] = \
                server.create_authorization_response(request=oauth_request,
                                                     grant_user=approval, grant=grant)
            return result

        try:
            await run_in_threadpool(validate)
        except OAuth2Error as exc:
            return _redirect_error(redirect_uri, exc.error,
                                   exc.get_error_description() or exc.error, state)
        if patient is not None:
            try:  # the record of the decision first: no Consent, no code
                await consents.approved(
                    grant_id=approval.grant_id, client=client, fhir_user=session.fhir_user,
                    patient=patient, requested=requested, granted=approved, start=now,
                    end=approval.expires or now, address=client_address(request))
            except Exception:
                log.exception("could not record the Consent of user %s for client %s; no "
                              "code issued", session.username, client.client_id)
                raise PageError("unavailable", 503) from None
        try:
            status, _, headers = await run_in_threadpool(issue)
        except OAuth2Error as exc:
            await withdraw(request, approval, client)
            return _redirect_error(redirect_uri, exc.error,
                                   exc.get_error_description() or exc.error, state)
        except Exception:
            await withdraw(request, approval, client)
            raise
        location = dict(headers).get("Location")
        if status != 302 or not location:
            await withdraw(request, approval, client)
            raise PageError("bad_request")
        if "code" not in dict(parse_qsl(urlsplit(location).query)):
            await withdraw(request, approval, client)  # Authlib answered with an error
            return RedirectResponse(location, status_code=303,
                                    headers={"Cache-Control": "no-store"})
        log.info("user %s approved client %s: %s", session.username, client.client_id,
                 approved.to_string())
        await record_auth_event(request, subtype="authorization-approved", success=True,
                                client_id=client.client_id, user=session.fhir_user,
                                patient=patient, scopes=approved.to_string())
        return RedirectResponse(location, status_code=303,
                                headers={"Cache-Control": "no-store"})

    async def withdraw(request: Request, approval: Approval, client: Client) -> None:
        """The approval's Consent once its code could not be issued after all: inactive."""
        if approval.patient is None:
            return
        grant = Grant(grant_id=approval.grant_id, client_id=client.client_id,
                      username=approval.username, fhir_user=approval.fhir_user, scope="",
                      created=approval.granted_at or 0.0, expires=approval.expires or 0.0,
                      patient=approval.patient)
        try:
            await consents.revoked(grant, clock(), address=client_address(request))
        except Exception:
            log.exception("could not withdraw the Consent of grant %s", approval.grant_id)

    async def record_denial(request: Request, parked: AuthRequest, session: Session,
                            client: Client, requested: ScopeSet,
                            form: dict[str, str]) -> None:
        """The rejected Consent (when a patient is in context) and the denial event. A failure
        to write them is logged: the app gets no access either way."""
        if parked.ehr_launch:
            patient = parked.launch_patient
        elif is_patient_user(session):
            patient = own_patient(session)
        else:
            chosen = form.get("patient")
            patient = chosen if chosen and await patient_exists(service, chosen) else None
        if patient is not None:
            try:
                await consents.denied(client=client, fhir_user=session.fhir_user,
                                      patient=patient, requested=requested, at=clock(),
                                      address=client_address(request))
            except Exception:
                log.exception("could not record the denial of user %s for client %s",
                              session.username, client.client_id)
        await record_auth_event(request, subtype="authorization-denied", success=False,
                                client_id=client.client_id, user=session.fhir_user,
                                patient=patient, scopes=requested.to_string(),
                                detail="the user did not allow access")

    async def launch_context(parked: AuthRequest, session: Session, approved: ScopeSet,
                             form: dict[str, str]) -> tuple[str | None, str | None]:
        """The patient and encounter in context: from the EHR launch, the patient user, or
        the practitioner's picks (checked against the store)."""
        if parked.ehr_launch:
            return parked.launch_patient, parked.launch_encounter
        if is_patient_user(session):
            patient = own_patient(session)
        elif needs_patient_context(approved) or form.get("patient"):
            patient = form.get("patient")
            if not patient or not await patient_exists(service, patient):
                raise PageError("bad_patient")
        else:
            patient = None
        encounter = form.get("encounter") or None
        if encounter is not None:
            owner = await encounter_patient(service, encounter)
            if owner is None or (patient is not None and owner != patient):
                raise PageError("bad_patient")
            patient = patient or owner
        if needs_patient_context(approved) and patient is None:
            raise PageError("no_patient")
        return patient, encounter

    router.add_api_route("/auth/approve", approve, methods=["GET", "POST"],
                         include_in_schema=False)

    async def signed_in(auth_store: AuthStore, request: Request,
                        page: str) -> Session | Response:
        """The caller's session; without one, GET goes to the sign-in page (and back to `page`
        after it), a POST is refused."""
        session = await session_of(auth_store, request)
        if session is not None:
            return session
        if request.method == "POST":
            raise PageError("not_signed_in", 403)
        return RedirectResponse(f"{url('login')}?next={page}", status_code=303,
                                headers={"Cache-Control": "no-store"})

    # -- EHR launcher ----------------------------------------------------------------------

    async def ehr(request: Request) -> Response:
        async def handle(auth_store: AuthStore) -> Response:
            session = await signed_in(auth_store, request, "ehr")
            if isinstance(session, Response):
                return session
            if not session.fhir_user.startswith("Practitioner/"):
                raise PageError("practitioner_only", 403)
            clients = [c for c in await run_in_threadpool(auth_store.list_clients)
                       if c.launch_uri and "authorization_code" in c.grant_types]
            if request.method == "GET":
                csrf = (await run_in_threadpool(csrf_of, auth_store)).token(
                    "ehr", session.session_hash)
                apps = [{"id": c.client_id, "label": app_name(c, request)} for c in clients]
                patients = await list_patients(service)
                encounters = await list_encounters(service)
                return pages.render(
                    request, "ehr.html", action=url("ehr"), csrf=csrf, apps=apps,
                    patients=patients, encounters=encounters, username=session.username,
                    form_action=[origin_of(c.launch_uri) for c in clients if c.launch_uri])
            form, _ = await checked_post(request, auth_store, "ehr", session.session_hash)
            client = next((c for c in clients if c.client_id == form.get("client_id")), None)
            if client is None or client.launch_uri is None:
                raise PageError("unknown_client")
            patient = form.get("patient", "")
            if not await patient_exists(service, patient):
                raise PageError("bad_patient")
            encounter = form.get("encounter") or None
            if encounter is not None and await encounter_patient(service, encounter) != patient:
                raise PageError("bad_patient")
            launch = await run_in_threadpool(
                lambda: create_launch(auth_store, username=session.username,
                                      client_id=client.client_id, patient=patient,
                                      encounter=encounter, now=clock()))
            target = add_params_to_uri(client.launch_uri,
                                       [("iss", urls.fhir_base), ("launch", launch)])
            log.info("user %s launched client %s for Patient/%s", session.username,
                     client.client_id, patient)
            return RedirectResponse(target, status_code=303,
                                    headers={"Cache-Control": "no-store"})
        return await guarded(request, handle)

    router.add_api_route("/auth/ehr", ehr, methods=["GET", "POST"], include_in_schema=False)

    # -- grant management ------------------------------------------------------------------

    async def manage(request: Request) -> Response:
        async def handle(auth_store: AuthStore) -> Response:
            session = await signed_in(auth_store, request, "manage")
            if isinstance(session, Response):
                return session
            if request.method == "POST":
                form, _ = await checked_post(request, auth_store, "manage",
                                             session.session_hash)
                grant = await run_in_threadpool(auth_store.get_grant,
                                                form.get("grant_id", ""))
                if grant is not None and grant.username == session.username:
                    now = clock()
                    if await run_in_threadpool(auth_store.revoke_grant, grant.grant_id, now):
                        await record_grant_revoked(request, auth_store, grant.grant_id,
                                                   "revoked by the user", now)
                    log.info("user %s revoked grant %s", session.username, grant.grant_id)
                return RedirectResponse(url("manage"), status_code=303,
                                        headers={"Cache-Control": "no-store"})
            csrf = await run_in_threadpool(csrf_of, auth_store)
            lang_key = choose_lang(request)
            grants = []
            for g in await run_in_threadpool(auth_store.list_grants, session.username,
                                             clock()):
                client = await run_in_threadpool(auth_store.get_client, g.client_id)
                grants.append({
                    "id": g.grant_id, "app": app_name(client, request) or g.client_id,
                    "patient": g.patient,
                    "scopes": [describe(s, lang_key) for s in g.scope.split()]})
            return pages.render(request, "manage.html", action=url("manage"),
                                csrf=csrf.token("manage", session.session_hash),
                                logout_action=url("logout"),
                                logout_csrf=csrf.token("logout", session.session_hash),
                                grants=grants, username=session.username)
        return await guarded(request, handle)

    router.add_api_route("/auth/manage", manage, methods=["GET", "POST"],
                         include_in_schema=False)

    # -- style and stylesheet --------------------------------------------------------------

    @router.get("/auth/style.json", include_in_schema=False)
    async def style() -> Response:
        return Response(orjson.dumps(STYLE), media_type="application/json",
                        headers={"Cache-Control": "public, max-age=3600"})

    @router.get("/auth/static/auth.css", include_in_schema=False)
    async def stylesheet() -> Response:
        return FileResponse(STATIC / "auth.css", media_type="text/css",
                            headers={"Cache-Control": "public, max-age=3600"})

    return router
