"""Rendering: Liquid variables, escaping, one-line subjects, the unsubscribe link, templates by id, errors."""

from __future__ import annotations

import html as htmllib
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dripcore import Contact, Drip, Enrollment, Sequence, SequenceStatus, Step, UnknownVariables
from dripcore.adapters.memory import MemoryStore
from dripcore.errors import DripcoreError
from dripcore.ports import OutboxStatus, Rendered
from dripcore.render import (
    DEFAULT_FOOTER_HTML,
    DEFAULT_FOOTER_TEXT,
    InvalidContent,
    LiquidRenderer,
    MemoryTemplateStore,
    RenderError,
    RenderLimitExceeded,
    SimpleRenderer,
    Template,
    TemplateNotFound,
    UnknownVariable,
    placeholder_unsubscribe_url,
    unsubscribe_link,
)
from dripcore.testing import FakeClock, MemoryContacts, RecordingEvents, RecordingSender

AT = datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc)
URL = "https://example.com/unsubscribe?e=e1&c=c1"


def contact(**fields: Any) -> Contact:
    return Contact(**{"id": "c1", "email": "ana@example.com", "first_name": "Ana", "last_name": "Lopez", **fields})


def enrollment(**fields: Any) -> Enrollment:
    base = {"id": "e1", "sequence_id": "welcome", "contact_id": "c1", "status": "active"}
    return Enrollment(**{**base, "enrolled_at": AT, "next_step_due_at": AT, **fields})


def sequence(policy: UnknownVariables = UnknownVariables.EMPTY) -> Sequence:
    return Sequence(id="welcome", name="Welcome", unknown_variables=policy)


def renderer(**options: Any) -> LiquidRenderer:
    options.setdefault("unsubscribe_url", lambda c, e: URL)
    return LiquidRenderer(**options)


def render(
    step: Step,
    *,
    r: LiquidRenderer | None = None,
    policy: UnknownVariables = UnknownVariables.EMPTY,
    person: Contact | None = None,
    enrolled: Enrollment | None = None,
) -> Rendered:
    return (r or renderer()).render(
        step, sequence=sequence(policy), contact=person or contact(), enrollment=enrolled or enrollment()
    )


def text_step(text: str, subject: str = "Hello", position: int = 1) -> Step:
    return Step(position=position, subject=subject, text=text)


def html_step(html: str, subject: str = "Hello", position: int = 1) -> Step:
    return Step(position=position, subject=subject, html=html)


# --------------------------------------------------------------------------- variables


def test_every_documented_variable_spelling_renders() -> None:
    """email, firstName/FirstName/first_name, lastName/LastName/last_name and unsubscribe_url."""
    source = (
        "{{email}}|{{firstName}}|{{FirstName}}|{{first_name}}|"
        "{{lastName}}|{{LastName}}|{{last_name}}|{{unsubscribe_url}}"
    )
    assert render(text_step(source)).text == f"ana@example.com|Ana|Ana|Ana|Lopez|Lopez|Lopez|{URL}"


def test_metadata_and_enrollment_variables_are_available_and_the_enrollment_wins() -> None:
    """Any metadata key, any enrollment variable; on a clash the enrollment's value."""
    person = contact(metadata={"plan": "pro", "city": "Paris", "order": {"total": 42}})
    enrolled = enrollment(variables={"city": "Lyon", "coupon": "WELCOME10"})
    step = text_step("{{plan}} {{city}} {{coupon}} {{order.total}} {{unsubscribe_url}}")
    assert render(step, person=person, enrolled=enrolled).text == f"pro Lyon WELCOME10 42 {URL}"


def test_metadata_cannot_replace_the_unsubscribe_link_or_the_contact_fields() -> None:
    """Built-in names win: contact data can't redirect the unsubscribe link."""
    person = contact(metadata={"unsubscribe_url": "https://evil.example/", "email": "x@evil.example"})
    rendered = render(text_step("{{unsubscribe_url}} {{email}}"), person=person)
    assert rendered.text == f"{URL} ana@example.com"


def test_liquid_filters_work_for_marketers() -> None:
    """Liquid's standard filters: default for optional data, upcase, and so on."""
    step = text_step('Hi {{ nickname | default: "there" }}, {{ firstName | upcase }}! {{unsubscribe_url}}')
    assert render(step).text == f"Hi there, ANA! {URL}"


# --------------------------------------------------------------------------- escaping


def test_html_bodies_escape_variables() -> None:
    """A first name of <script> arrives as text in HTML."""
    person = contact(first_name="<script>alert(1)</script>", metadata={"quote": "\"a\" & 'b'"})
    rendered = render(html_step('<p title="{{quote}}">Hi {{firstName}}</p>{{unsubscribe_url}}'), person=person)
    assert rendered.html == (
        '<p title="&#34;a&#34; &amp; &#39;b&#39;">Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>'
        "https://example.com/unsubscribe?e=e1&amp;c=c1"
    )


def test_text_bodies_and_subjects_are_not_escaped() -> None:
    """Plain text has no markup to protect: variables come through as they are."""
    person = contact(first_name="<Ana & co>")
    rendered = render(
        Step(position=1, subject="Hi {{firstName}}", text="Hi {{firstName}} {{unsubscribe_url}}"), person=person
    )
    assert rendered.subject == "Hi <Ana & co>"
    assert rendered.text == f"Hi <Ana & co> {URL}"


def test_template_markup_written_by_the_author_is_kept() -> None:
    """Only variables are escaped; the author's literals and tags are theirs."""
    step = html_step("{{ '<b>' | append: firstName }}{% if firstName %}<i>yes</i>{% endif %}{{unsubscribe_url}}")
    assert render(step).html == "<b>Ana<i>yes</i>https://example.com/unsubscribe?e=e1&amp;c=c1"


# --------------------------------------------------------------------------- subjects


@pytest.mark.parametrize("nasty", ["\r\nBcc: all@example.com", "\nX: y", "\r", "a\u2028b", "a\x85b", "\x0b\x0c"])
def test_subject_line_breaks_from_data_are_folded_into_spaces(nasty: str) -> None:
    """CR/LF (and every other line break) in a variable can't start a new header line."""
    person = contact(metadata={"nasty": nasty})
    subject = render(Step(position=1, subject="Hi {{nasty}} there", text="x"), person=person).subject
    assert "\r" not in subject
    assert "\n" not in subject
    assert len(subject.splitlines()) <= 1
    assert subject == " ".join(f"Hi {nasty} there".split())


def test_subject_control_characters_are_dropped() -> None:
    """Escape, DEL and friends never reach a header (NUL can't even be stored in contact data)."""
    person = contact(metadata={"junk": "a\x01b\x1bc\x7fd\x9b"})
    assert render(Step(position=1, subject="{{junk}}", text="x"), person=person).subject == "abcd"


def test_an_oversized_rendered_subject_is_refused() -> None:
    """Past 998 characters a subject can't be a header line: a specific error naming the field."""
    person = contact(metadata={"long": "x" * 2000})
    with pytest.raises(InvalidContent) as caught:
        render(Step(position=1, subject="{{long}}", text="x"), person=person)
    assert caught.value.field == "subject"


# --------------------------------------------------------------------------- unknown variables


def test_unknown_variables_render_empty_under_the_empty_policy() -> None:
    """EMPTY: an unknown variable is an empty string, in subjects and bodies."""
    step = Step(position=1, subject="Hi {{nickname}}!", text="Code: {{coupon}}. {{unsubscribe_url}}")
    rendered = render(step, policy=UnknownVariables.EMPTY)
    assert rendered.subject == "Hi !"
    assert rendered.text == f"Code: . {URL}"


@pytest.mark.parametrize(
    ("field", "step"),
    [
        ("subject", Step(position=2, subject="Hi {{nickname}}", text="x")),
        ("text", Step(position=2, subject="Hi", text="line one\nline {{ nickname }}")),
        ("html", Step(position=2, subject="Hi", html="<p>\n{{ nickname | upcase }}</p>")),
    ],
)
def test_unknown_variables_raise_under_the_error_policy(field: str, step: Step) -> None:
    """ERROR: the error names the variable, sequence, step, field and line."""
    with pytest.raises(UnknownVariable) as caught:
        render(step, policy=UnknownVariables.ERROR)
    error = caught.value
    assert error.variable == "nickname"
    assert (error.sequence_id, error.position, error.field) == ("welcome", 2, field)
    assert error.line == (1 if field == "subject" else 2)
    assert "unknown variable 'nickname'" in str(error)
    assert str(error).startswith(f"sequence 'welcome' step 2 {field} line {error.line}")


def test_error_policy_names_the_missing_part_of_a_dotted_path() -> None:
    """A known object with a missing key is reported by its full path."""
    person = contact(metadata={"address": {"city": "Paris"}})
    with pytest.raises(UnknownVariable) as caught:
        render(text_step("{{ address.zip }}"), policy=UnknownVariables.ERROR, person=person)
    assert caught.value.variable == "address.zip"


def test_error_policy_still_allows_testing_and_defaulting_optional_data() -> None:
    """Under ERROR, {% if %} and the default filter are how a template handles optional data."""
    step = text_step(
        "{% if nickname %}{{ nickname }}{% else %}friend{% endif %} {{ coupon | default: 'none' }} {{unsubscribe_url}}"
    )
    assert render(step, policy=UnknownVariables.ERROR).text == f"friend none {URL}"


def test_a_known_but_empty_field_is_not_unknown() -> None:
    """A contact without a last name renders an empty string even under ERROR."""
    assert (
        render(
            text_step("[{{lastName}}] {{unsubscribe_url}}"), person=contact(last_name=""), policy=UnknownVariables.ERROR
        ).text
        == f"[] {URL}"
    )


# --------------------------------------------------------------------------- unsubscribe


def test_a_text_body_without_the_link_gets_a_footer() -> None:
    """The link is always included: appended after a blank line."""
    rendered = render(text_step("Welcome aboard!\n"))
    assert rendered.text == f"Welcome aboard!\n\nUnsubscribe: {URL}\n"


def test_an_html_body_without_the_link_gets_a_footer_inside_body() -> None:
    """The HTML footer goes just before </body> (any case), escaped."""
    rendered = render(html_step("<html><body><p>Hi</p></BODY></html>"))
    assert rendered.html is not None
    assert rendered.html.startswith("<html><body><p>Hi</p><p ")
    assert rendered.html.endswith(
        '<a href="https://example.com/unsubscribe?e=e1&amp;c=c1">Unsubscribe</a></p></BODY></html>'
    )


def test_an_html_fragment_without_the_link_gets_the_footer_appended() -> None:
    """No </body>: the footer goes at the end."""
    rendered = render(html_step("<p>Hi</p>"))
    assert rendered.html is not None
    assert rendered.html.startswith("<p>Hi</p><p ")
    assert rendered.html.count("example.com/unsubscribe") == 1


def test_bodies_that_show_the_link_get_no_footer() -> None:
    """A template that places {{unsubscribe_url}} itself is left as written."""
    step = Step(
        position=1, subject="Hi",
        html='<p>Hi</p><a href="{{ unsubscribe_url }}">Leave</a>', text="Hi. Leave: {{ unsubscribe_url }}",
    )  # fmt: skip
    rendered = render(step)
    assert rendered.html == '<p>Hi</p><a href="https://example.com/unsubscribe?e=e1&amp;c=c1">Leave</a>'
    assert rendered.text == f"Hi. Leave: {URL}"


def test_a_link_hidden_in_a_branch_not_taken_still_gets_a_footer() -> None:
    """The check is on the output, not the source."""
    rendered = render(text_step("{% if vip %}{{ unsubscribe_url }}{% endif %}Bye"))
    assert rendered.text == f"Bye\n\nUnsubscribe: {URL}\n"


def test_footers_are_configurable_liquid_templates() -> None:
    """A host may word the footer; it is rendered with the same variables."""
    r = renderer(
        footer_text="Plus de mails, {{firstName}} ? {{ unsubscribe_url }}",
        footer_html="<a href='{{unsubscribe_url}}'>x</a>",
    )
    rendered = render(Step(position=1, subject="s", text="Salut", html="<p>Salut</p>"), r=r)
    assert rendered.text == f"Salut\n\nPlus de mails, Ana ? {URL}\n"
    assert rendered.html == "<p>Salut</p><a href='https://example.com/unsubscribe?e=e1&amp;c=c1'>x</a>"


@pytest.mark.parametrize("footer", ["Unsubscribe here", "{{ unsubscribe }}", "{% if %}"])
def test_a_footer_that_does_not_show_the_link_is_refused(footer: str) -> None:
    """A footer must carry {{ unsubscribe_url }}: checked at construction."""
    with pytest.raises(ValueError, match="footer_text"):
        LiquidRenderer(footer_text=footer)


def test_list_unsubscribe_headers_are_emitted() -> None:
    """List-Unsubscribe always; the one-click POST header for an https link (RFC 8058)."""
    assert dict(render(text_step("x")).headers) == {
        "List-Unsubscribe": f"<{URL}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


@pytest.mark.parametrize("url", ["http://example.com/u/1", "mailto:unsubscribe@example.com?subject=e1"])
def test_one_click_needs_https(url: str) -> None:
    """RFC 8058 one-click requires an https URI: other schemes get List-Unsubscribe only."""
    assert dict(render(text_step("x"), r=renderer(unsubscribe_url=lambda c, e: url)).headers) == {
        "List-Unsubscribe": f"<{url}>"
    }


def test_an_unsubscribe_pattern_string_builds_quoted_links() -> None:
    """A pattern with {enrollment_id}, {contact_id}, {sequence_id}, {email} (URL-quoted)."""
    r = LiquidRenderer(unsubscribe_url="https://example.com/u/{sequence_id}/{enrollment_id}?to={email}")
    person = contact(email="ana+news@example.com")
    rendered = render(text_step("{{unsubscribe_url}}"), r=r, person=person)
    assert rendered.text == "https://example.com/u/welcome/e1?to=ana%2Bnews%40example.com"


def test_an_unsubscribe_pattern_with_an_unknown_field_is_refused() -> None:
    """Typos in the pattern fail at construction, not at the first send."""
    with pytest.raises(ValueError, match="use only the fields"):
        unsubscribe_link("https://example.com/u/{enrolment_id}")


def test_the_default_unsubscribe_link_is_an_unresolvable_placeholder() -> None:
    """Without configuration the link points into the reserved .invalid domain."""
    rendered = render(text_step("{{unsubscribe_url}}"), r=LiquidRenderer())
    assert rendered.text == "https://unsubscribe.invalid/welcome/e1"
    assert placeholder_unsubscribe_url(contact(), enrollment()) == rendered.text


@pytest.mark.parametrize("bad", ["", "no-scheme", "javascript:alert(1)", "https://x/\r\nBcc: y", "https://x/<a>", 7])
def test_a_bad_unsubscribe_link_is_a_render_error(bad: Any) -> None:
    """The link ends up in a header and an href: it must be a plain http(s)/mailto URL."""
    with pytest.raises(RenderError) as caught:
        render(text_step("x"), r=renderer(unsubscribe_url=lambda c, e: bad))
    assert caught.value.field == "unsubscribe_url"


def test_a_failing_unsubscribe_callable_raises_its_own_error() -> None:
    """The host's callable raising (a token service that is down) is not a template error: its exception
    comes through as it is, so the engine sets that one enrollment aside and tries again later instead
    of failing the email for good."""

    def broken(c: Contact, e: Enrollment) -> str:
        raise KeyError("no token for this contact")

    with pytest.raises(KeyError, match="no token"):
        render(text_step("x"), r=renderer(unsubscribe_url=broken))


# --------------------------------------------------------------------------- caching


def test_templates_compile_once_for_many_contacts() -> None:
    """The cache is keyed by content: 100 contacts, 3 fields, 3 compilations."""
    r = renderer()
    step = Step(position=1, subject="Hi {{firstName}}", text="Text {{email}}", html="<p>{{email}}</p>")
    for i in range(100):
        render(step, r=r, person=contact(id=f"c{i}", email=f"p{i}@example.com"))
    info = r.cache_info()
    assert info.misses == 3
    assert info.hits == 297
    assert info.currsize == 3


def test_an_edited_template_compiles_anew() -> None:
    """Editing content makes a new cache entry; nothing stale is served."""
    r = renderer()
    assert render(text_step("one {{unsubscribe_url}}"), r=r).text == f"one {URL}"
    assert render(text_step("two {{unsubscribe_url}}"), r=r).text == f"two {URL}"
    assert r.cache_info().misses == 3  # subject + two texts


def test_the_cache_is_bounded() -> None:
    """Least recently used entries go first once cache_size is reached."""
    r = renderer(cache_size=4)
    for i in range(20):
        render(text_step(f"body {i}"), r=r)
    assert r.cache_info().currsize == 4
    render(text_step("body 19"), r=r)
    assert r.cache_info().misses == 21  # the subject plus 20 bodies; body 19 was still cached


def test_a_broken_template_is_parsed_once_too() -> None:
    """A malformed template fails every time without being parsed again."""
    r = renderer()
    for _ in range(5):
        with pytest.raises(RenderError):
            render(text_step("{% if %}"), r=r)
    assert r.cache_info().misses == 2  # the subject and the broken body


def test_the_unknown_variable_policy_does_not_share_compiled_templates() -> None:
    """The same text under EMPTY and ERROR must not reuse the other's compilation."""
    r = renderer()
    assert render(text_step("[{{nope}}]"), r=r).text == f"[]\n\nUnsubscribe: {URL}\n"
    with pytest.raises(UnknownVariable):
        render(text_step("[{{nope}}]"), r=r, policy=UnknownVariables.ERROR)


# --------------------------------------------------------------------------- malformed templates


@pytest.mark.parametrize(
    ("source", "line", "fragment"),
    [
        ("Hello\n\n{% bogus %}", 3, "unexpected tag 'bogus'"),
        ("a\nb\n{% for x in list %}\n{{ x }}\n{% endfo %}", 5, "endfo"),
        ("one\n{{ amount | divided_by: 0 }}", 2, "divided_by"),
        ("one\ntwo {{ name | no_such_filter }}", 2, "no_such_filter"),
    ],
)
def test_a_template_error_names_sequence_step_field_and_line(source: str, line: int, fragment: str) -> None:
    """A malformed template raises RenderError pointing at the line."""
    with pytest.raises(RenderError) as caught:
        render(Step(position=4, subject="s", html=source))
    error = caught.value
    assert (error.sequence_id, error.position, error.field, error.line) == ("welcome", 4, "html", line)
    assert str(error).startswith(f"sequence 'welcome' step 4 html line {line}: ")
    assert fragment in str(error)


def test_a_runaway_loop_is_stopped() -> None:
    """Resource limits stop a template that would loop for ever: a huge range, or loops nested deep."""
    with pytest.raises(RenderLimitExceeded, match="a range of 100,000,000 items") as caught:
        render(text_step("{% for i in (1..100000000) %}x{% endfor %}"))
    assert caught.value.limit == "max_items"
    with pytest.raises(RenderLimitExceeded, match="loop iteration limit") as caught:
        render(text_step("{% for i in (1..1000) %}{% for j in (1..1000) %}x{% endfor %}{% endfor %}"))
    assert caught.value.limit == "loop_iterations"


def test_include_without_a_store_is_a_render_error_not_a_crash() -> None:
    """Tags that reach outside the template fail cleanly."""
    with pytest.raises(RenderError):
        render(text_step("{% include 'footer' %}"))


# --------------------------------------------------------------------------- templates by id


def store() -> MemoryTemplateStore:
    return MemoryTemplateStore(
        {
            "welcome-1": Template(
                subject="Welcome {{firstName}}", html="<h1>Hi {{firstName}}</h1>", text="Hi {{firstName}}"
            ),
            "body-only": Template(text="Body for {{email}}"),
        }
    )


def test_a_template_id_step_renders_the_stored_template() -> None:
    """template_id resolves through the TemplateStore port."""
    rendered = render(Step(position=1, template_id="welcome-1"), r=renderer(templates=store()))
    assert rendered.subject == "Welcome Ana"
    assert rendered.html is not None
    assert rendered.html.startswith("<h1>Hi Ana</h1>")
    assert rendered.text == f"Hi Ana\n\nUnsubscribe: {URL}\n"


def test_the_steps_own_fields_win_over_the_template() -> None:
    """The usual shape: subject on the step, body in the template."""
    step = Step(position=1, subject="Your order, {{firstName}}", template_id="body-only")
    rendered = render(step, r=renderer(templates=store()))
    assert rendered.subject == "Your order, Ana"
    assert rendered.text == f"Body for ana@example.com\n\nUnsubscribe: {URL}\n"
    assert rendered.html is None


def test_an_edited_stored_template_takes_effect_at_once() -> None:
    """The store is read on each rendering; the cache is keyed by content."""
    templates = store()
    r = renderer(templates=templates)
    templates.put("body-only", Template(text="New body {{unsubscribe_url}}"))
    assert render(Step(position=1, subject="s", template_id="body-only"), r=r).text == f"New body {URL}"


def test_a_missing_template_is_a_render_error() -> None:
    """An unknown template_id names the template."""
    with pytest.raises(TemplateNotFound) as caught:
        render(Step(position=3, template_id="gone"), r=renderer(templates=store()))
    assert caught.value.template_id == "gone"
    assert str(caught.value).startswith("sequence 'welcome' step 3 (template 'gone') template_id")


def test_a_template_id_without_a_store_is_a_render_error() -> None:
    """No store configured: the message is set aside, with that reason."""
    with pytest.raises(TemplateNotFound, match="no template store"):
        render(Step(position=1, template_id="welcome-1"))


def test_a_template_without_a_subject_needs_one_on_the_step() -> None:
    """No subject anywhere: the error names the subject field."""
    with pytest.raises(RenderError) as caught:
        render(Step(position=1, template_id="body-only"), r=renderer(templates=store()))
    assert caught.value.field == "subject"


def test_a_template_error_in_a_stored_template_names_it_and_the_line() -> None:
    """Errors in stored content say which template they come from."""
    templates = MemoryTemplateStore({"t": Template(subject="s", html="ok\n{% endif %}")})
    with pytest.raises(RenderError) as caught:
        render(Step(position=2, template_id="t"), r=renderer(templates=templates))
    assert str(caught.value).startswith("sequence 'welcome' step 2 (template 't') html line 2: ")


# --------------------------------------------------------------------------- oversized and binary content


@pytest.mark.parametrize(
    ("template", "field"),
    [
        (Template(subject="s", html="<p>\x00</p>"), "html"),
        (Template(subject="s", text="PK\x03\x04 zip archive"), "text"),
        (Template(subject="s\x01", text="fine"), "subject"),
        (Template(subject="s", text=b"bytes are not text"), "text"),  # type: ignore[arg-type]
        (Template(subject="s", text="x" * 101), "text"),
    ],
)
def test_binary_or_oversized_stored_content_names_the_field(template: Template, field: str) -> None:
    """Oversized or binary bodies raise InvalidContent naming the field."""
    r = renderer(templates=MemoryTemplateStore({"t": template}), max_body=100)
    with pytest.raises(InvalidContent) as caught:
        render(Step(position=1, template_id="t"), r=r)
    assert caught.value.field == field
    assert caught.value.template_id == "t"


def test_a_body_that_grows_too_large_once_rendered_is_refused() -> None:
    """Variables and loops can blow a small template up: the output is bounded too."""
    r = renderer(max_body=1000)
    with pytest.raises(InvalidContent) as caught:
        render(text_step("{% for i in (1..500) %}{{ email }}{% endfor %}"), r=r)
    assert caught.value.field == "text"


# --------------------------------------------------------------------------- the engine


def test_simple_renderer_is_the_liquid_renderer() -> None:
    """The engine's historical default name now means the Liquid renderer."""
    assert SimpleRenderer is LiquidRenderer


def test_a_template_error_sets_one_message_aside_and_the_tick_goes_on() -> None:
    """One enrollment's broken rendering fails that message only; the others are sent."""
    contacts = MemoryContacts([contact(id="ok", email="ok@example.com"), contact(id="bad", email="bad@example.com")])
    sender, events, store_ = RecordingSender(), RecordingEvents(), MemoryStore()
    drip = Drip(store=store_, sender=sender, clock=FakeClock(AT), contacts=contacts, events=events, renderer=renderer())
    steps = (Step(position=1, subject="Hi {{firstName}}", text="Your code: {{ code }}"),)
    drip.save_sequence(
        Sequence(id="welcome", name="W", status=SequenceStatus.ACTIVE, steps=steps, unknown_variables="error")
    )
    drip.enroll("welcome", "ok", variables={"code": "A1"})
    drip.enroll("welcome", "bad")
    report = drip.tick()
    assert report.sent == 1
    assert [e.to for e in sender.sent] == ["ok@example.com"]
    assert sender.sent[0].text == f"Your code: A1\n\nUnsubscribe: {URL}\n"
    assert dict(sender.sent[0].headers)["List-Unsubscribe"] == f"<{URL}>"
    failed = store_.find_messages(status=OutboxStatus.FAILED)
    assert len(failed) == 1
    assert failed[0].last_error is not None
    assert "unknown variable 'code'" in failed[0].last_error
    assert "sequence.step.failed" in events.names()


# --------------------------------------------------------------------------- properties

# Text a contact may hold: the model refuses NUL and lone surrogates, which no store can encode.
_storable = st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])
_one_line_names = st.text(_storable, max_size=60).filter(str.isprintable)  # names are single-line text


@given(first_name=_one_line_names, value=st.text(_storable, max_size=200))
def test_variables_never_inject_markup_into_html(first_name: str, value: str) -> None:
    """For any text in a first name or metadata, the HTML has no '<' that came from a variable."""
    person = contact(first_name=first_name, metadata={"note": value})
    rendered = render(html_step("{{firstName}} {{ note }} {{ FirstName | upcase }} {{unsubscribe_url}}"), person=person)
    assert rendered.html is not None
    assert "<" not in rendered.html
    assert ">" not in rendered.html
    assert '"' not in rendered.html
    # Line endings come out normalised to LF (the wire turns every one into CRLF anyway).
    expected = f"{first_name} {value} {first_name.upper()} {URL}".replace("\r\n", "\n").replace("\r", "\n")
    assert htmllib.unescape(rendered.html) == expected
    framed = render(html_step("<p>{{ note }}</p>"), person=person).html
    assert framed is not None
    assert framed.count("<") == 2 + DEFAULT_FOOTER_HTML.count("<")


@given(first_name=_one_line_names, value=st.text(_storable, max_size=200))
def test_subjects_never_contain_line_breaks(first_name: str, value: str) -> None:
    """For any text in a first name or metadata, the subject stays one header line."""
    person = contact(first_name=first_name, metadata={"note": value})
    subject = render(Step(position=1, subject="{{firstName}}: {{ note }}!", text="x"), person=person).subject
    assert "\r" not in subject
    assert "\n" not in subject
    assert len(subject.splitlines()) <= 1
    assert subject == subject.strip()


def test_render_errors_are_dripcore_errors() -> None:
    """The engine catches DripcoreError: every rendering error must be one."""
    for cls in (RenderError, UnknownVariable, TemplateNotFound, InvalidContent, RenderLimitExceeded):
        assert issubclass(cls, DripcoreError)
    assert DEFAULT_FOOTER_TEXT.count("unsubscribe_url") == 1
