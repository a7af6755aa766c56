"""Server-rendered pages of the authorization server (plan §6): sign-in, approval, EHR launcher,
grant management, errors. Chinese by default, English on request.

Jinja2 with autoescape on every template; no JavaScript; one column with `<meta viewport>` for
phones. Language: `?lang=zh|en` (remembered in a cookie), then the cookie, then
`Accept-Language`, then Chinese. Every page is `Cache-Control: no-store` with a CSP that allows
only our stylesheet and form posts to ourselves plus, where a form's answer redirects to an app
(approval, EHR launch), that app's origin — browsers apply `form-action` to the redirects after a
form submission too. `frame-ancestors 'none'` stops click-jacking of the approve button.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

Lang = Literal["zh", "en"]
LANG_COOKIE = "yilian_lang"
TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"

MESSAGES: dict[str, dict[str, str]] = {
    "zh": {
        "brand": "医链 Yilian",
        "other_lang": "English",
        "login_title": "登录",
        "username": "用户名",
        "password": "密码",
        "sign_in": "登录",
        "login_failed": "用户名或密码错误，或尝试次数过多，请稍后再试。",
        "login_for": "应用“{app}”请求访问您的健康记录，请先登录。",
        "approve_title": "授权访问",
        "approve_intro": "应用“{app}”（将返回到 {host}）请求以下权限：",
        "clinical_scopes": "健康记录（可取消勾选您不想共享的内容）",
        "only_categories": "或只共享以下类别（需先取消上面的整项）",
        "other_scopes": "其他权限",
        "pick_patient": "选择患者",
        "search_patient": "按姓名、拼音或身份证号查找患者",
        "search": "查找",
        "no_match": "没有找到匹配的患者，请换个关键词。",
        "pick_encounter": "选择就诊",
        "no_encounter": "（不指定就诊）",
        "approve": "同意",
        "deny": "拒绝",
        "signed_in_as": "当前用户：{user}",
        "sign_out": "退出登录",
        "signed_out": "您已退出登录。",
        "error_title": "无法继续",
        "back_to_app": "请返回应用重新开始。",
        "ehr_title": "从电子病历启动应用",
        "ehr_app": "应用",
        "ehr_patient": "患者",
        "ehr_encounter": "就诊（可选）",
        "ehr_launch": "启动",
        "ehr_no_apps": "没有注册了启动地址（launch_uri）的应用。",
        "manage_title": "已授权的应用",
        "manage_none": "您没有授权任何应用。",
        "revoke": "撤销授权",
        "granted_on": "授权范围",
        "patient_label": "患者",
        "encounter_label": "就诊",
    },
    "en": {
        "brand": "Yilian 医链",
        "other_lang": "中文",
        "login_title": "Sign in",
        "username": "Username",
        "password": "Password",
        "sign_in": "Sign in",
        "login_failed": "Wrong username or password, or too many attempts; please try again "
                        "later.",
        "login_for": "The app “{app}” asks to access your health records. Please sign in "
                     "first.",
        "approve_title": "Allow access",
        "approve_intro": "The app “{app}” (returning to {host}) asks for:",
        "clinical_scopes": "Health records (untick anything you do not want to share)",
        "only_categories": "Or share only these categories (untick the whole item above "
                           "first)",
        "other_scopes": "Other permissions",
        "pick_patient": "Choose a patient",
        "search_patient": "Find a patient by name, pinyin or ID number",
        "search": "Search",
        "no_match": "No patient matches; try other words.",
        "pick_encounter": "Choose an encounter",
        "no_encounter": "(no encounter)",
        "approve": "Allow",
        "deny": "Deny",
        "signed_in_as": "Signed in as {user}",
        "sign_out": "Sign out",
        "signed_out": "You are signed out.",
        "error_title": "Cannot continue",
        "back_to_app": "Please go back to the app and start again.",
        "ehr_title": "Launch an app from the EHR",
        "ehr_app": "App",
        "ehr_patient": "Patient",
        "ehr_encounter": "Encounter (optional)",
        "ehr_launch": "Launch",
        "ehr_no_apps": "No app has a registered launch URL (launch_uri).",
        "manage_title": "Apps you have allowed",
        "manage_none": "You have not allowed any app.",
        "revoke": "Revoke",
        "granted_on": "Access",
        "patient_label": "Patient",
        "encounter_label": "Encounter",
    },
}

# Error pages: (zh, en) per reason; never echo request values.
ERRORS: dict[str, tuple[str, str]] = {
    "unknown_client": ("未知的应用（client_id 无效）。", "Unknown app (invalid client_id)."),
    "bad_redirect": ("应用的返回地址（redirect_uri）未注册或不唯一。",
                     "The app's redirect_uri is not registered (or not unique)."),
    "bad_aud": ("请求的 aud 不是本服务器的 FHIR 地址，已拒绝。",
                "The request's aud is not this server's FHIR base URL; refused."),
    "no_code_flow": ("该应用未注册授权码模式。",
                     "This app is not registered for the authorization code flow."),
    "bad_request": ("请求格式无效。", "The request is malformed."),
    "expired_request": ("授权请求已过期或已完成。", "The authorization request expired or was "
                        "completed already."),
    "csrf": ("页面已过期或来源无效，请重新操作。", "The form expired or came from another site; "
             "please try again."),
    "not_signed_in": ("您尚未登录或登录已过期。", "You are not signed in, or your session "
                      "expired."),
    "wrong_user": ("此启动属于另一位用户。", "This launch belongs to another user."),
    "practitioner_only": ("只有医务人员可以从电子病历启动应用。",
                          "Only clinical staff can launch apps from the EHR."),
    "bad_patient": ("所选患者或就诊无效。", "The chosen patient or encounter is not valid."),
    "no_patient": ("请求需要患者信息，但没有可用的患者。",
                   "The request needs a patient, but none is available."),
    "unavailable": ("服务暂时不可用，请稍后再试。", "The service is unavailable; try again "
                    "shortly."),
}


def choose_lang(request: Request) -> Lang:
    asked = request.query_params.get("lang")
    if asked in ("zh", "en"):
        return "en" if asked == "en" else "zh"
    cookie = request.cookies.get(LANG_COOKIE)
    if cookie in ("zh", "en"):
        return "en" if cookie == "en" else "zh"
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh"
        if tag.startswith("en"):
            return "en"
    return "zh"


class Pages:
    def __init__(self, static_prefix: str) -> None:
        self.env = Environment(loader=FileSystemLoader(TEMPLATES),
                               autoescape=select_autoescape(default=True, default_for_string=True))
        self.static_prefix = static_prefix

    def render(self, request: Request, template: str, *, status: int = 200,
               form_action: Iterable[str] = (), **context: Any) -> HTMLResponse:
        lang = choose_lang(request)
        other: Lang = "en" if lang == "zh" else "zh"
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
        switch = request.url.path + "?" + urlencode([*query, ("lang", other)])
        html = self.env.get_template(template).render(
            lang=lang, t=MESSAGES[lang], switch_url=switch,
            css=f"{self.static_prefix}/auth.css", **context)
        response = HTMLResponse(html, status_code=status, headers=security_headers(form_action))
        response.headers["Content-Language"] = "zh-CN" if lang == "zh" else "en"
        if request.query_params.get("lang") in ("zh", "en"):
            response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/auth",
                                samesite="lax", httponly=True)
        return response

    def error(self, request: Request, reason: str, status: int = 400) -> HTMLResponse:
        lang = choose_lang(request)
        zh, en = ERRORS.get(reason, ERRORS["bad_request"])
        return self.render(request, "error.html", status=status,
                           message=zh if lang == "zh" else en)


def security_headers(form_action: Iterable[str] = ()) -> Mapping[str, str]:
    actions = " ".join(["'self'", *dict.fromkeys(form_action)])
    return {
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Content-Security-Policy": (f"default-src 'none'; style-src 'self'; img-src 'self'; "
                                    f"form-action {actions}; frame-ancestors 'none'; "
                                    "base-uri 'none'"),
        # not `no-referrer`: under it browsers send `Origin: null` on our own form posts, and
        # the CSRF check needs the real origin; `same-origin` still sends nothing to other sites
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }
