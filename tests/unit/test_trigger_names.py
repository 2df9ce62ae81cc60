"""`flask rules check` refuses a name the rule's trigger never provides, naming those it does: `actor`
holds only `ContactId` (who made the change) on sets whose change feed records one, and nothing on sets
InLoox records no author for (scanned sets, Budget, Document)."""
import textwrap

import pytest

from engine import load_texts

RULE = """\
id: r
when:
  - inloox: {entity_set}
    on: {on}
then:
  - notify: x
    body: "{body}"
"""


def errors_of(entity_set: str, body: str, on: str = "updated") -> list[str]:
    text = textwrap.dedent(RULE.format(entity_set=entity_set, body=body, on=on))
    return [e.format() for e in load_texts([("r.yaml", text)]).errors]


def test_a_feed_s_actor_holds_only_the_contact_id():
    assert errors_of("Task", "{{ actor.DisplayName }}") == [
        "r.yaml:7:11: then[0].body: actor.DisplayName: actor holds only ContactId on Task events "
        "(who made the change) (actor holds: ContactId)"]
    assert errors_of("Task", "{{ actor.ContactId }}") == []


@pytest.mark.parametrize("entity_set", ["Contact", "CheckList", "Budget", "Document"])
def test_a_set_without_an_author_has_an_empty_actor(entity_set):
    [error] = errors_of(entity_set, "{{ actor.ContactId }}")
    assert f"actor.ContactId: actor is empty on {entity_set} events: InLoox records no author" in error


def test_deleted_events_carry_no_actor():
    [error] = errors_of("Task", "{{ actor.ContactId }}", on="deleted")
    assert "actor.ContactId: actor is empty on Task deleted events" in error


def test_the_whole_actor_may_be_read_anywhere():
    assert errors_of("Contact", "{{ actor | tojson }}") == []


def test_the_change_feed_docs_show_the_actor_deliveries_carry():
    # Deliveries pass the event's actor on as it is (workers/deliveries.py): a ContactId, nothing more.
    import re
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "change-feed.md").read_text()
    [actor] = re.findall(r'"actor": (\{[^}]*\})', docs)
    assert re.findall(r'"(\w+)":', actor) == ["ContactId"]
