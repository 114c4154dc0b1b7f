"""The audit trail's event ids (M2): unique, and written in key order so a million payment events
land on neighbouring pages of the event table's index instead of uuid4's scattered ones."""

import time
import uuid

from fbs_debitor.core.ledger import ordered_id


def test_M2_event_ids_of_one_call_are_unique_valid_uuids_in_insertion_order():
    base = time.time_ns()
    ids = [ordered_id(base, i) for i in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).version == 8 and uuid.UUID(i).variant == uuid.RFC_4122 for i in ids[:100])
    assert ids[:4096] == sorted(ids[:4096])                      # the row's place orders a call's ids
    later = ordered_id(base + 2_000_000, 0)                        # 2 ms later
    assert later > max(ids)                                        # a later call sorts after


def test_M2_event_ids_of_two_calls_in_the_same_millisecond_do_not_collide():
    base = time.time_ns()
    first = {ordered_id(base, i) for i in range(5000)}
    second = {ordered_id(base, i) for i in range(5000)}
    assert not first & second
