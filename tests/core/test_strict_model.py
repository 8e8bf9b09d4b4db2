"""The model's edges are strict: whatever a constructor or the JSON converter is given, only a
DripcoreError comes out, and whatever they accept is storable and survives a JSON round trip."""

from __future__ import annotations

import email.headerregistry
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from dripcore import (
    Cancelled,
    Completed,
    Condition,
    ConditionType,
    Contact,
    DecodeError,
    Delay,
    DripcoreError,
    Enrollment,
    Event,
    ExitReason,
    SenderIdentity,
    SendWindow,
    Sequence,
    SkipReason,
    Step,
    StepFailed,
    StepSent,
    StepSkipped,
    Subscribed,
    Trigger,
    TriggerEvent,
    ValidationError,
    WaitUntil,
    event_from_json,
    make_converter,
    parse_wait,
)
from dripcore.model import zone
from tests.strategies import (
    contacts,
    delays,
    enrollments,
    hostile_characters,
    hostile_texts,
    ids,
    instants,
    json_values,
    python_garbage,
    sequences,
    steps_lists,
    trigger_events,
    triggers,
    waits,
    windows,
)

conv = make_converter()

# A test per model type runs a share of the profile's examples, so that the file stays quick
# (well under 30 s with the ci profile) while every type still gets a hundred cases or more.
per_type = settings(max_examples=max(10, settings.default.max_examples // 4))

EVENTS: dict[type, st.SearchStrategy[Any]] = {
    Subscribed: st.builds(
        Subscribed, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants, key=st.none() | ids
    ),
    StepSent: st.builds(
        StepSent, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        position=st.integers(1, 9), idempotency_key=ids,
    ),
    StepFailed: st.builds(
        StepFailed, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        position=st.integers(1, 9), error=st.text(max_size=20), reason=st.none() | st.just("bounced"),
    ),
    StepSkipped: st.builds(
        StepSkipped, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        position=st.integers(1, 9), reason=st.sampled_from(list(SkipReason)),
    ),
    Completed: st.builds(Completed, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants),
    Cancelled: st.builds(
        Cancelled, enrollment_id=ids, sequence_id=ids, contact_id=ids, at=instants,
        reason=st.sampled_from(list(ExitReason)),
    ),
}  # fmt: skip
events = st.one_of(*EVENTS.values())

#: A valid value of every public model type.
VALID: dict[type, st.SearchStrategy[Any]] = {
    Delay: delays(),
    WaitUntil: waits(),
    SendWindow: windows(),
    Condition: st.builds(Condition, type=st.sampled_from(list(ConditionType)), step=st.integers(1, 9)),
    SenderIdentity: st.builds(
        SenderIdentity,
        from_email=st.sampled_from(["team@example.com", "zoë@exämple.com", "o'brien+news@mail.example.org"]),
        from_name=st.none() | st.just("The Team"),
        reply_to=st.none() | st.just("help@example.com"),
    ),
    Step: steps_lists(max_size=1).map(lambda steps: steps[0]),
    Trigger: triggers,
    TriggerEvent: trigger_events,
    Sequence: sequences(status=None),
    Enrollment: enrollments(),
    Contact: contacts() | contacts(suppressed=True),
    **EVENTS,
}
MODEL_TYPES = sorted(VALID, key=lambda cls: cls.__name__)
STORED_TYPES = (Sequence, Enrollment, Contact, TriggerEvent)


def only_dripcore_errors(build: Callable[[], Any]) -> Any:
    """``build()``, or None when it raised a DripcoreError; anything else fails the test."""
    try:
        return build()
    except DripcoreError:
        return None


def assert_round_trips(value: Any, cls: Any) -> None:
    """``value`` goes to JSON text (strict: no NaN, valid UTF-8) and back unchanged."""
    text = json.dumps(conv.unstructure(value), allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")  # no lone surrogate
    if cls in STORED_TYPES:  # what a store keeps: no NUL, raw or escaped (PostgreSQL's jsonb can't)
        assert "\x00" not in text
        assert "\\u0000" not in text
    assert conv.structure(json.loads(text), cls) == value


def init_fields(value: Any) -> dict[str, Any]:
    return {f.alias: getattr(value, f.name) for f in attrs.fields(type(value)) if f.init}


@st.composite
def mangled_kwargs(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    """The fields of a valid ``cls``, with up to three replaced by junk, dropped or added."""
    kwargs = init_fields(draw(VALID[cls]))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["junk", "junk", "junk", "drop", "add"]))
        if action == "add":
            kwargs[draw(st.sampled_from(["surprise", "_zone", "type"]))] = draw(python_garbage)
        elif kwargs:
            name = draw(st.sampled_from(sorted(kwargs)))
            if action == "drop":
                del kwargs[name]
            else:
                kwargs[name] = draw(python_garbage)
    return kwargs


class TestConstructors:
    @pytest.mark.parametrize("cls", MODEL_TYPES, ids=lambda cls: cls.__name__)
    @per_type
    @given(data=st.data())
    def test_junk_in_any_field_raises_only_dripcore_errors(self, cls: type, data: st.DataObject) -> None:
        """Wrong types, hostile text, huge numbers, edge instants: a DripcoreError or a valid value."""
        kwargs = data.draw(mangled_kwargs(cls))
        call_error: TypeError | None = None
        try:
            value = cls(**kwargs)
        except DripcoreError as exc:
            event(f"refused: {type(exc).__name__}")
            return
        except TypeError as exc:  # only Python's own call checks: a missing or unknown keyword
            call_error = exc
        if call_error is not None:
            assert "argument" in str(call_error), call_error
            return
        event("accepted")
        assert_round_trips(value, cls)

    @given(python_garbage, python_garbage)
    def test_parsers_and_named_constructors_raise_only_dripcore_errors(self, first: Any, second: Any) -> None:
        """The text parsers and the convenience constructors take junk like the constructors do."""
        builders: list[Callable[[], Any]] = [
            lambda: Delay.parse(first),
            lambda: WaitUntil.parse(first),
            lambda: parse_wait(first),
            lambda: SendWindow.parse(first),
            lambda: SendWindow.parse("mon-fri 09:00-17:00", outside=first),
            lambda: SendWindow.business_days(first, second),
            lambda: zone(first),
            lambda: Delay.hours(first),
            lambda: TriggerEvent.tag_added(first, second),
            lambda: TriggerEvent.purchase("c1", product_id=first, order_id=second),
            lambda: TriggerEvent.purchase("c1", variables=first),
            lambda: TriggerEvent.anniversary("c1", "birthday", year=first),
            lambda: TriggerEvent.manual(first, second),
        ]
        for build in builders:
            only_dripcore_errors(build)

    @given(hostile_texts | st.text())
    def test_storable_single_line_text_is_the_only_text_accepted_in_names(self, text: str) -> None:
        """A name, a subject, a trigger value is one line of storable text, nothing else."""
        forbidden = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}
        clean = not (set(text) & forbidden) and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        builders: list[tuple[Callable[[], Any], bool]] = [  # (build, whether a blank text is fine)
            (lambda: Contact(id="c1", email="a@example.com", first_name=text, last_name=text), True),
            (lambda: Step(position=1, template_id="t", name=text), True),
            (lambda: Step(position=1, subject=text, text="body"), False),
            (lambda: SenderIdentity(from_email="a@example.com", from_name=text), False),
            (lambda: Trigger(type="tag_added", value=text), False),
            (lambda: TriggerEvent.tag_added("c1", text), False),
            (lambda: Condition(type="clicked", step=1, link=text), False),
        ]
        for build, blank_is_fine in builders:
            value = only_dripcore_errors(build)
            if not clean:
                assert value is None, f"accepted {text!r}"
            elif len(text) <= 255 and (blank_is_fine or text.strip()):
                assert value is not None, f"refused {text!r}"

    @given(hostile_texts | st.text(), st.sampled_from(["", "<p>Hello</p>\n\t", "Bonjour\r\n"]))
    def test_bodies_keep_newlines_but_refuse_nul_and_lone_surrogates(self, text: str, around: str) -> None:
        """An email body may span lines; it may not hold what no store can encode."""
        body = around + text + around
        unstorable = "\x00" in body or any(0xD800 <= ord(c) <= 0xDFFF for c in body)
        for build in (
            lambda: Step(position=1, subject="s", text=body or "x"),
            lambda: Step(position=1, subject="s", html=body or "x"),
            lambda: Sequence(id="s", name="S", description=body),
        ):
            assert (only_dripcore_errors(build) is None) is unstorable

    @given(st.recursive(hostile_texts | st.integers() | st.none(), lambda c: st.lists(c, max_size=3) | st.dictionaries(
        hostile_texts, c, max_size=3), max_leaves=8))  # fmt: skip
    def test_metadata_and_variables_refuse_nul_and_lone_surrogates_at_any_depth(self, value: Any) -> None:
        """Keys and values alike, however deep: no store could hold them."""
        document = {"k": value}
        text = json.dumps(document, ensure_ascii=False)
        storable = "\\u0000" not in text and "\x00" not in text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            storable = False
        for build in (
            lambda: Contact(id="c1", email="a@example.com", metadata=document),
            lambda: TriggerEvent(type="manual", contact_id="c1", variables=document),
        ):
            accepted = only_dripcore_errors(build)
            assert (accepted is not None) is storable
            if accepted is not None:
                assert_round_trips(accepted, type(accepted))


local_parts = st.text("abcXYZ0189!#$%&'*+-/=?^_`{|}~éü用", min_size=1, max_size=12)
domains = st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True), min_size=1, max_size=3).map(
    ".".join
)


class TestEmailAddresses:
    @given(local_parts, domains)
    def test_plain_addresses_are_accepted(self, local: str, domain: str) -> None:
        """Every dot-atom address of letters, digits and RFC 5322's atext, ASCII or UTF-8."""
        address = f"{local}@{domain}"
        assert Contact(id="c1", email=address).email == address
        if address.isascii():  # the standard library reads it the same way
            parsed = email.headerregistry.Address(addr_spec=address)
            assert (parsed.username, parsed.domain) == (local, domain)

    @given(local_parts, domains, hostile_characters, st.integers(0, 30))
    def test_an_address_with_a_separator_or_control_character_is_refused(
        self, local: str, domain: str, char: str, at: int
    ) -> None:
        """No comma, semicolon, bracket, quote, space, control character or lone surrogate, anywhere."""
        if char in {".", "'", "%", "="}:
            return  # a dot or a character of atext may be fine, depending on where it lands
        address = f"{local}@{domain}"
        at = min(at, len(address))
        hostile = address[:at] + char + address[at:]
        with pytest.raises(DripcoreError):
            Contact(id="c1", email=hostile)

    @given(hostile_texts | st.text())
    def test_any_accepted_address_is_one_mailbox_the_standard_library_agrees_on(self, text: str) -> None:
        """Whatever the input, an accepted address is one addr-spec, storable, of at most 254 octets."""
        contact = only_dripcore_errors(lambda: Contact(id="c1", email=text))
        if contact is None:
            return
        local, _, domain = text.rpartition("@")
        assert len(text.encode("utf-8")) <= 254
        assert len(local.encode("utf-8")) <= 64
        assert text.isprintable()
        assert " " not in text
        if local.isascii():
            parsed = email.headerregistry.Address(addr_spec=text)
            assert (parsed.username, parsed.domain) == (local, domain)

    @pytest.mark.parametrize(
        "address",
        [
            "x>,<v@evil.example", "a;b@c.example", "a,b@c.example", "Ana <ana@example.com>", '"a b"@example.com',
            "a@[192.0.2.1]", "a(comment)@example.com", "a@b@c.example", "a\x00@example.com", "a\ud800@example.com",
            "a\u2028@example.com", "a\x85@example.com", " a@example.com", "a@example.com ", "a@example.com\r\nBcc: x@y",
            "...@example.com", "a@-example.com", "a@example-.com",
            "a@example..com", "a@example.com.", "@example.com", "a@", "a", "", "x" * 65 + "@example.com",
            "a@" + ".".join(["x" * 63] * 4), "a@" + "x" * 64 + ".com",
        ],
    )  # fmt: skip
    def test_a_hostile_address_is_refused(self, address: str) -> None:
        """The shapes that smuggle a second recipient or a header, or that no server takes."""
        with pytest.raises(DripcoreError):
            Contact(id="c1", email=address)
        with pytest.raises(DripcoreError):
            SenderIdentity(from_email=address)
        with pytest.raises(DripcoreError):
            SenderIdentity(from_email="team@example.com", reply_to=address)

    @pytest.mark.parametrize(
        "address",
        ["a@example.com", "zoë@exämple.com", "用户@例子.广告", "o'brien@example.ie", "x@xn--mnchen-3ya.de",
         "ta..ro@ezweb.ne.jp", "taro.@docomo.ne.jp",
         "#!$%&'*+-/=?^_`{}|~@example.org", "a@localhost", "a" * 64 + "@example.com"],
    )  # fmt: skip
    def test_real_addresses_are_accepted(self, address: str) -> None:
        """International (RFC 6531) addresses, atext, a single-label domain, 64-octet local parts."""
        assert Contact(id="c1", email=address).email == address


# --------------------------------------------------------------------------- JSON


def _mangle(data: st.DataObject, document: Any) -> Any:
    """``document`` with one change somewhere: a value replaced by any JSON, a key dropped or added."""
    if isinstance(document, dict) and document and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(document)))
        return {**document, key: _mangle(data, document[key])}
    if isinstance(document, list) and document and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(document) - 1))
        return [*document[:i], _mangle(data, document[i]), *document[i + 1 :]]
    action = data.draw(st.sampled_from(["replace", "replace", "drop", "add"]))
    if action == "drop" and isinstance(document, dict) and document:
        key = data.draw(st.sampled_from(sorted(document)))
        return {k: v for k, v in document.items() if k != key}
    if action == "add" and isinstance(document, dict):
        return {**document, data.draw(hostile_texts): data.draw(json_values)}
    return data.draw(json_values)


class TestDecoding:
    @pytest.mark.parametrize("cls", [*MODEL_TYPES, Event], ids=lambda cls: getattr(cls, "__name__", "Event"))
    @per_type
    @given(data=st.data())
    def test_a_mangled_document_raises_only_dripcore_errors_naming_a_field(self, cls: Any, data: st.DataObject) -> None:
        """One change anywhere in a valid document: a DripcoreError with a field, or a valid value."""
        value = data.draw(VALID[cls] if cls is not Event else events)
        document = _mangle(data, json.loads(json.dumps(conv.unstructure(value))))
        error: DripcoreError | None = None
        try:
            decoded = conv.structure(document, cls)
        except DripcoreError as exc:
            error = exc
        if error is not None:
            event(f"refused: {type(error).__name__}")
            assert isinstance(error, ValidationError)
            assert error.field
            return
        event("accepted")
        assert_round_trips(decoded, type(decoded) if cls is Event else cls)

    @given(st.sampled_from([*MODEL_TYPES, Event]), python_garbage)
    def test_any_document_at_all_raises_only_dripcore_errors(self, cls: Any, document: Any) -> None:
        """Not even a mapping: still a DripcoreError."""
        only_dripcore_errors(lambda: conv.structure(document, cls))

    @given(python_garbage | st.dictionaries(hostile_texts, json_values))
    def test_event_from_json_raises_only_dripcore_errors(self, payload: Any) -> None:
        only_dripcore_errors(lambda: event_from_json(payload))

    # The typed leaves of each type: a value of any other JSON type is refused, never coerced.
    LEAVES: tuple[tuple[type, str, str], ...] = (
        (Delay, "amount", "int"),
        (WaitUntil, "days", "int"),
        (SendWindow, "overnight", "bool"),
        (Condition, "step", "int"),
        (Step, "position", "int"),
        (Step, "active", "bool"),
        (Sequence, "enroll_existing", "bool"),
        (Sequence, "version", "int"),
        (Enrollment, "last_step_sent", "int"),
        (Enrollment, "version", "int"),
        (StepSent, "position", "int"),
        (Contact, "email", "str"),
        (Sequence, "name", "str"),
    )

    @given(leaf=st.sampled_from(LEAVES), data=st.data(), replacement=json_values)
    def test_a_leaf_of_another_json_type_is_a_decode_error(
        self, leaf: tuple[type, str, str], data: st.DataObject, replacement: Any
    ) -> None:
        """A "false" for a boolean, a 1.9 or true for an integer, a number for a string: DecodeError, named."""
        cls, name, kind = leaf
        expected = {"int": int, "bool": bool, "str": str}[kind]
        if type(replacement) is expected:
            return
        document = json.loads(json.dumps(conv.unstructure(data.draw(VALID[cls]))))
        document[name] = replacement
        with pytest.raises(DecodeError) as info:
            conv.structure(document, cls)
        assert info.value.field == name
