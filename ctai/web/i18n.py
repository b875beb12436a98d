"""The pages' languages: English (the catalog's message ids) and Simplified Chinese.

Every sentence a page shows is a gettext message: in templates ``_()`` and ``{% trans %}``
(Jinja2's i18n extension), in Python ``t.gettext`` / ``t.ngettext`` where ``t = texts(request)``,
or ``N_()`` (``ctai.web.messages``) in a table whose sentence is translated where it is shown.
The catalogs are in ``ctai/web/locale`` (``.po`` edited, ``.mo`` compiled by ``pybabel compile``;
see docs/translations.md).

A request's language: ``?lang=`` (kept in a cookie by the app), else that cookie, else the
browser's ``Accept-Language``, else English.
"""

from __future__ import annotations

from functools import cache
from gettext import NullTranslations
from importlib import resources

from babel.support import Translations
from jinja2 import Environment, pass_context
from jinja2.runtime import Context
from starlette.requests import Request

#: Language tags (BCP 47, as in ``<html lang>``) and their names in their own language.
LANGUAGES = {"en": "English", "zh-CN": "简体中文"}
DEFAULT = "en"
COOKIE = "ctai_lang"


@cache
def translations(lang: str) -> NullTranslations:
    """The catalog of ``lang`` (a tag of LANGUAGES); English is the message ids themselves."""
    if lang == DEFAULT:
        return NullTranslations()
    folder = str(resources.files("ctai.web").joinpath("locale"))
    return Translations.load(folder, [lang.replace("-", "_")])


def _from_header(header: str) -> str | None:
    """The first language of LANGUAGES in an Accept-Language header, by its weights (RFC 9110 12.5.4)."""
    weighted = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        weight = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            weighted.append((-float(weight), position, tag.strip().lower()))
        except ValueError:
            continue
    for weight, _, tag in sorted(weighted):
        primary = tag.split("-")[0]
        if weight < 0 and primary in ("en", "zh"):  # any Chinese reads Simplified better than English
            return "zh-CN" if primary == "zh" else "en"
    return None


def chosen(value: str | None) -> str | None:
    """``value`` if it names one of LANGUAGES (any case), else None."""
    return next((lang for lang in LANGUAGES if value and value.lower() == lang.lower()), None)


def language(request: Request) -> str:
    """The language of the page answering ``request``."""
    return (chosen(request.query_params.get("lang")) or chosen(request.cookies.get(COOKIE))
            or _from_header(request.headers.get("accept-language", "")) or DEFAULT)


def texts(request: Request) -> NullTranslations:
    """The catalog for ``request``: ``texts(request).gettext("...")``."""
    return translations(language(request))


@pass_context
def _gettext(context: Context, message: str) -> str:
    return texts(context["request"]).gettext(message)


@pass_context
def _ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    return texts(context["request"]).ngettext(singular, plural, n)


def install(env: Environment) -> None:
    """Jinja2's i18n extension in ``env``, translating for each template's ``request``."""
    env.add_extension("jinja2.ext.i18n")
    env.policies["ext.i18n.trimmed"] = True  # message ids without the template's line breaks
    env.install_gettext_callables(_gettext, _ngettext, newstyle=True)
    env.globals["languages"] = LANGUAGES
