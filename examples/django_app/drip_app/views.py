"""The one-click unsubscribe page behind every email's signed link (RFC 8058).

GET (a reader clicking the link) shows a confirmation page whose form POSTs to
the same URL. POST (that form, or the mailbox provider's one-click button,
which sends ``List-Unsubscribe=One-Click`` as a form body) unsubscribes the
contact the token was signed for and answers 200. A token that doesn't verify
answers 400 and unsubscribes nobody.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from dripcore import InvalidUnsubscribeToken

from .engine import get_drip, unsubscribe_links


@csrf_exempt  # the mailbox provider POSTs without a cookie or a CSRF token; the signed token is the proof
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        who = unsubscribe_links().verify(token)
    except InvalidUnsubscribeToken:
        return render(request, "drip_app/unsubscribe.html", {"state": "invalid"}, status=400)
    if request.method == "GET":  # a link prefetcher must not unsubscribe anyone: only a POST does
        return render(request, "drip_app/unsubscribe.html", {"state": "confirm"})
    get_drip().contact_unsubscribed(who.contact_id)  # idempotent: a second POST changes nothing
    return render(request, "drip_app/unsubscribe.html", {"state": "done"})
