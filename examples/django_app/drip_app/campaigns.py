"""The site's sequences, kept as code: ``drip.sync_sequences(SEQUENCES)`` stores them.

Edit a definition here and deploy: the stored sequence takes the new steps and
keeps its state (an operator's pause survives), and subscribers go on from where
they were. ``status=ACTIVE`` makes a new sequence live on its first deploy.
"""

from dripcore import Delay, Sequence, SequenceStatus, Step, Trigger, TriggerType

#: The tag a new user gets (drip_app/signals.py): it starts the welcome sequence.
SIGNED_UP = "signed-up"

SEQUENCES = [
    Sequence(
        id="welcome",
        name="Welcome",
        status=SequenceStatus.ACTIVE,
        trigger=Trigger(type=TriggerType.TAG_ADDED, value=SIGNED_UP),
        steps=(
            Step(
                position=1,
                name="Welcome",
                subject="Welcome, {{ first_name }}!",
                text="Hi {{ first_name }}, thanks for signing up.",
                html="<p>Hi {{ first_name }}, thanks for signing up.</p>",
            ),
            Step(
                position=2,
                name="Tips",
                delay=Delay.days(2),
                subject="Three tips to get started",
                text="{{ first_name }}, here are three tips.",
                html="<p>{{ first_name }}, here are three tips.</p>",
            ),
        ),
    ),
]
