import dataclasses

import msgpack
import numpy as np
import pytest

from buffer import CodecError, decode_group, encode_group
from buffer.codec import _FIXED, _TRAJ_SCALARS, ARRAY_FIELDS, MAGIC, SCHEMA_VERSION, checksum
from buffer.schema import Trajectory


def _reframe(payload: bytes, edit_header) -> bytes:
    """Re-encode a payload with an edited msgpack header and a valid checksum."""
    _, version, header_len, _ = _FIXED.unpack_from(payload)
    header = msgpack.unpackb(payload[_FIXED.size:_FIXED.size + header_len])
    edit_header(header)
    packed = msgpack.packb(header, use_bin_type=True)
    body = packed + payload[_FIXED.size + header_len:]
    return _FIXED.pack(MAGIC, version, len(packed), checksum(body)) + body


def test_round_trip_keeps_every_field(make_group):
    group = make_group([0.0, 1.0, 0.5], version=3, priority=0.25)
    group.trajectories[1].reward_parts = {"correct": 1.0}
    group.trajectories[2].loss_mask[2:4] = 0
    decoded = decode_group(encode_group(group))
    assert (decoded.group_id, decoded.task_id, decoded.category, decoded.priority) == \
        (group.group_id, group.task_id, group.category, 0.25)
    assert decoded.created_at == group.created_at
    for original, copy in zip(group.trajectories, decoded.trajectories, strict=True):
        for name in ("prompt_ids", "completion_ids", "loss_mask", "behavior_logprobs", "policy_versions"):
            np.testing.assert_array_equal(getattr(copy, name), getattr(original, name))
            assert getattr(copy, name).dtype == getattr(original, name).dtype
        assert (copy.reward, copy.reward_parts, copy.finish_reason) == \
            (original.reward, original.reward_parts, original.finish_reason)
    with pytest.raises(ValueError, match="read-only"):  # views into the immutable payload, not copies
        decoded.trajectories[0].completion_ids[0] = 7
    writable = decode_group(bytearray(encode_group(group)))  # a caller that needs to write passes a bytearray
    writable.trajectories[0].completion_ids[0] = 7
    assert writable.trajectories[0].completion_ids[0] == 7


def test_corrupted_byte_is_caught_by_checksum(make_group):
    payload = bytearray(encode_group(make_group([0.0, 1.0])))
    payload[-5] ^= 0xFF
    with pytest.raises(CodecError, match="checksum"):
        decode_group(bytes(payload))


def test_truncated_payloads(make_group):
    payload = encode_group(make_group([0.0, 1.0]))
    with pytest.raises(CodecError, match="truncated"):
        decode_group(payload[:10])
    with pytest.raises(CodecError, match="checksum|truncated"):
        decode_group(payload[:-4])


def test_wrong_version_and_magic(make_group):
    payload = encode_group(make_group([0.0, 1.0]))
    _, _, header_len, crc = _FIXED.unpack_from(payload)
    newer = _FIXED.pack(MAGIC, SCHEMA_VERSION + 1, header_len, crc) + payload[_FIXED.size:]
    with pytest.raises(CodecError, match=f"schema version {SCHEMA_VERSION + 1}"):
        decode_group(newer)
    with pytest.raises(CodecError, match="bad magic"):
        decode_group(b"PKL!" + payload[4:])


def test_wrong_dtype_and_lengths_are_named(make_group):
    payload = encode_group(make_group([0.0, 1.0]))

    def float64_logprobs(header):
        header["arrays"][3][1] = "<f8"

    with pytest.raises(CodecError, match="behavior_logprobs has dtype '<f8', expected '<f4'"):
        decode_group(_reframe(payload, float64_logprobs))

    def longer_completion(header):  # claims more tokens than the payload carries
        header["lengths"][1][1] += 1

    with pytest.raises(CodecError, match="truncated: policy_versions needs"):
        decode_group(_reframe(payload, longer_completion))

    def shorter_completion(header):
        header["lengths"][0][1] -= 1

    with pytest.raises(CodecError, match="trailing bytes"):
        decode_group(_reframe(payload, shorter_completion))

    def negative_length(header):
        header["lengths"][0] = [3, -1]

    with pytest.raises(CodecError, match=r"trajectory 0: invalid lengths \[3, -1\]"):
        decode_group(_reframe(payload, negative_length))

    def missing_trajectory_lengths(header):
        header["lengths"].pop()

    with pytest.raises(CodecError, match="'lengths' must list"):
        decode_group(_reframe(payload, missing_trajectory_lengths))


def test_missing_scalar_field_is_named(make_group):
    payload = encode_group(make_group([0.0, 1.0]))
    with pytest.raises(CodecError, match="'reward' is missing"):
        decode_group(_reframe(payload, lambda h: h["columns"].pop("reward")))


def test_non_finite_reward_and_bool_scalars_are_named(make_group):
    # decode builds trajectories without Trajectory's own checks: the codec must catch what they would
    payload = encode_group(make_group([0.0, 1.0]))
    with pytest.raises(CodecError, match="trajectory 1: reward must be finite, got nan"):
        decode_group(_reframe(payload, lambda h: h["columns"]["reward"].__setitem__(1, float("nan"))))
    with pytest.raises(CodecError, match="trajectory 0: field 'num_turns' has type bool"):
        decode_group(_reframe(payload, lambda h: h["columns"]["num_turns"].__setitem__(0, True)))
    with pytest.raises(CodecError, match="group: field 'priority' has type str"):
        decode_group(_reframe(payload, lambda h: h.update(priority="high")))


def test_payload_holds_every_trajectory_field():
    # decode sets exactly these fields (Trajectory.checked, no defaults): a new field must be encoded too
    assert set(ARRAY_FIELDS) | set(_TRAJ_SCALARS) == {f.name for f in dataclasses.fields(Trajectory)}


def _paths(node, path=()):
    """The path (keys of maps, indices of lists) to every value inside a msgpack header."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield (*path, key)
        yield from _paths(child, (*path, key))


def _replace(header, path, junk) -> None:
    for key in path[:-1]:
        header = header[key]
    header[path[-1]] = junk


def test_any_malformed_header_is_refused_with_a_codec_error(make_group):
    """The learner quarantines what raises CodecError and goes on; anything else would stop it on
    every draw of the group (an empty array-table row once raised IndexError)."""
    payload = encode_group(make_group([0.0, 1.0]))
    _, _, header_len, _ = _FIXED.unpack_from(payload)
    header = msgpack.unpackb(payload[_FIXED.size:_FIXED.size + header_len])
    refused = 0
    for path in list(_paths(header)):
        for junk in ([], {}, None, "x", -1, 2**40, [[]], [None, None], {"": []}, 1.5):
            try:
                decode_group(_reframe(payload, lambda h, path=path, junk=junk: _replace(h, path, junk)))
            except CodecError:
                refused += 1
    assert refused > 500  # most edits break the payload; none may escape as another exception
