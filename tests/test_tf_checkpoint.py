"""The NumPy checkpoint reader (keras_inception.weights.tf_checkpoint) against TensorFlow's.

Files are written by TensorFlow's own Saver (V1 and V2) with the public checkpoints' real
names and shapes; every variable must come back with the bytes TensorFlow's reader gives.
Damaged and hostile files must give one-line errors that say what is wrong.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from slim_kit import random_variables, write_checkpoint
from tensorflow.core.protobuf import tensor_bundle_pb2
from tensorflow.core.util import saved_tensor_slice_pb2

from keras_inception.weights import checkpoint, tf_checkpoint
from keras_inception.weights.tf_checkpoint import CheckpointError

FAMILIES = ("inception_v3", "inception_v4", "inception_resnet_v2")
VERSIONS = ("V1", "V2")


def sample(family: str) -> dict[str, np.ndarray]:
    """Every 12th variable of the public checkpoint up to 300k values (real names and shapes),
    its EMA shadow for one, and the other dtypes a checkpoint may hold."""
    variables = random_variables(family)
    picked = {k: v for k, v in list(variables.items())[::12] if v.size <= 300_000}
    first = next(iter(picked))
    rng = np.random.default_rng(1)
    return {
        **picked,
        f"{first}/ExponentialMovingAverage": picked[first] * 0.5,
        "global_step": np.array(2**40 + 3, np.int64),
        "float64": rng.normal(size=(3, 5)),
        "int32": rng.integers(-(2**31), 2**31, (7,), dtype=np.int32),
        "int64": rng.integers(-(2**63), 2**63, (4, 2), dtype=np.int64),
        "bool": rng.random(13) > 0.5,
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.float32(-2.5),
    }


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        value = np.asarray(value)
        assert (got[name].dtype, got[name].shape) == (value.dtype, value.shape), name
        assert got[name].tobytes() == value.tobytes(), name


def tensorflow_read(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


@pytest.fixture(scope="module", params=[(f, v) for f in FAMILIES for v in VERSIONS], ids="-".join)
def written(request, tmp_path_factory):
    family, version = request.param
    variables = sample(family)
    prefix = write_checkpoint(variables, str(tmp_path_factory.mktemp(family) / "model.ckpt"), version)
    return prefix, variables


def test_agrees_with_tensorflow(written):
    prefix, variables = written
    got = tf_checkpoint.read(prefix)
    assert_same(got, tensorflow_read(prefix))
    assert_same(got, variables)
    shapes = {k: tuple(v) for k, v in tf.train.load_checkpoint(prefix).get_variable_to_shape_map().items()}
    assert tf_checkpoint.variable_shapes(prefix) == shapes
    assert_same(checkpoint.read(prefix), variables)  # checkpoint.read goes through it


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_variable_of_the_public_layouts(tmp_path, family, version):
    variables = random_variables(family)
    prefix = write_checkpoint(variables, str(tmp_path / "model.ckpt"), version)
    got = tf_checkpoint.read(prefix)
    assert_same(got, tensorflow_read(prefix))
    assert_same(got, variables)


def write_partitioned(prefix: str, version: str) -> dict[str, np.ndarray]:
    """Partitioned variables (saved as slices), a float16 and a string; their full values."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    write_version = {"V1": tf.compat.v1.train.SaverDef.V1, "V2": tf.compat.v1.train.SaverDef.V2}[version]
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        init = tf.compat.v1.random_normal_initializer()
        rows = tf.compat.v1.get_variable(
            "rows", (10, 7, 3), initializer=init, partitioner=tf.compat.v1.fixed_size_partitioner(3, 0)
        )
        columns = tf.compat.v1.get_variable(
            "columns", (200, 70), initializer=init, partitioner=tf.compat.v1.fixed_size_partitioner(4, 1)
        )
        half = tf.compat.v1.Variable(np.linspace(-2, 2, 12).reshape(3, 4).astype(np.float16), name="half")
        text = tf.compat.v1.Variable([b"ab", b"", b"\xff\x00c"], name="text")
        saver = tf.compat.v1.train.Saver(
            {"rows": rows, "columns": columns, "half": half, "text": text}, write_version=write_version
        )
        session.run(tf.compat.v1.global_variables_initializer())
        full = {"rows": tf.concat(list(rows), 0), "columns": tf.concat(list(columns), 1)}
        values = session.run({**full, "half": half, "text": text})
        saver.save(session, prefix, write_meta_graph=False, write_state=False)
    return values


@pytest.mark.parametrize("version", VERSIONS)
def test_partitioned_float16_and_string_variables(tmp_path, version):
    prefix = str(tmp_path / "model.ckpt")
    values = write_partitioned(prefix, version)
    got = tf_checkpoint.read(prefix)
    assert sorted(got) == sorted(values)
    for name in ("rows", "columns", "half"):
        assert got[name].dtype == values[name].dtype and got[name].tobytes() == values[name].tobytes()
    assert got["text"].tolist() == [b"ab", b"", b"\xff\x00c"]
    if version == "V2":  # TensorFlow's reader reads V2 slices (not V1 ones, nor V1 float16)
        reference = tensorflow_read(prefix)
        for name in values:
            assert got[name].tolist() == reference[name].tolist(), name


# ---------------------------------------------------------------------------------------------
# Damaged and hostile files.

TINY = {
    "InceptionV3/Conv2d_1a_3x3/weights": np.arange(3 * 3 * 3 * 8, dtype=np.float32).reshape(3, 3, 3, 8),
    "InceptionV3/Logits/Conv2d_1c_1x1/biases": np.linspace(-1, 1, 1001, dtype=np.float32),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {v: write_checkpoint(TINY, str(root / v / "model.ckpt"), v) for v in VERSIONS}


def copy_of(tmp_path, prefix: str) -> str:
    """The checkpoint's files copied under ``tmp_path``; the copy's prefix."""
    directory, base = os.path.split(prefix)
    for name in os.listdir(directory):
        if name.startswith(base):
            with open(os.path.join(directory, name), "rb") as f, open(tmp_path / name, "wb") as g:
                g.write(f.read())
    return str(tmp_path / base)


def error_of(prefix: str) -> str:
    with pytest.raises(CheckpointError) as error:
        checkpoint.read(prefix)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("keep", [0, 1, 47, 48, 200, "half", "all-1"])
def test_truncated_v1(tmp_path, tiny, keep):
    prefix = copy_of(tmp_path, tiny["V1"])
    size = os.path.getsize(prefix)
    keep = {"half": size // 2, "all-1": size - 1}.get(keep, keep)
    with open(prefix, "r+b") as f:
        f.truncate(keep)
    reason = (
        f"{keep} bytes, too short for a table footer (48 bytes)"
        if keep < 48
        else "no table magic number at its end (not a TensorFlow checkpoint, or cut short)"
    )
    assert error_of(prefix) == f"cannot read checkpoint {prefix}: {reason}"


@pytest.mark.parametrize("version", VERSIONS)
def test_flipped_byte_is_a_checksum_mismatch(tmp_path, tiny, version):
    prefix = copy_of(tmp_path, tiny[version])
    target = prefix if version == "V1" else f"{prefix}.data-00000-of-00001"
    with open(target, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0x10]))
    if version == "V1":
        reason = "checksum mismatch in the block at offset 0"
        assert error_of(prefix) == f"cannot read checkpoint {prefix}: {reason}"
    else:
        assert error_of(prefix) == (
            f"cannot read checkpoint data file {target} (truncated or corrupt?): "
            "checksum mismatch for variable InceptionV3/Conv2d_1a_3x3/weights"
        )


def test_flipped_byte_in_the_v2_index(tmp_path, tiny):
    prefix = copy_of(tmp_path, tiny["V2"])
    with open(f"{prefix}.index", "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(bytes([byte[0] ^ 0x01]))
    assert error_of(prefix) == (
        f"cannot read checkpoint index {prefix}.index (truncated or corrupt?): "
        "checksum mismatch in the block at offset 0"
    )


@pytest.mark.parametrize("kind", ["missing", "short"])
def test_v2_data_shard_missing_or_short(tmp_path, tiny, kind):
    prefix = copy_of(tmp_path, tiny["V2"])
    data = f"{prefix}.data-00000-of-00001"
    if kind == "missing":
        os.remove(data)
        assert error_of(prefix) == f"checkpoint data file {data} is missing (beside {prefix}.index)"
    else:
        with open(data, "r+b") as f:
            f.truncate(1000)
        assert error_of(prefix) == (
            f"cannot read checkpoint data file {data} (truncated or corrupt?): "
            f"the index places more bytes in it than its 1000"
        )


def varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def write_table(path: str, entries: list[tuple[bytes, bytes]]) -> None:
    """A TensorFlow table of one data block (what the checkpoint writers make, for small files)."""

    def block(items: list[tuple[bytes, bytes]]) -> bytes:
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in items)
        body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart point, at 0
        return body + b"\x00" + mask(tf_checkpoint.crc32c([body + b"\x00"])[0]).to_bytes(4, "little")

    data = block(sorted(entries))
    index = block([(b"\xff", varint(0) + varint(len(data) - 5))])
    meta = block([])
    footer = varint(len(data) + len(index)) + varint(len(meta) - 5)  # the metaindex, then the index
    footer += varint(len(data)) + varint(len(index) - 5)
    footer = footer.ljust(40, b"\x00") + (0xDB4775248B80FB57).to_bytes(8, "little")
    with open(path, "wb") as f:
        f.write(data + index + meta + footer)


def table_entries(path: str) -> list[tuple[bytes, bytes]]:
    with open(path, "rb") as f:
        data = memoryview(bytearray(f.read()))
    return [(key, bytes(value)) for key, value in tf_checkpoint._table(data)]


def test_write_table_is_a_table_tensorflow_reads(tmp_path, tiny):
    prefix = copy_of(tmp_path, tiny["V2"])
    write_table(f"{prefix}.index", table_entries(f"{prefix}.index"))
    assert_same(tensorflow_read(prefix), TINY)
    assert_same(tf_checkpoint.read(prefix), TINY)


def test_v2_size_field_of_2_to_the_60(tmp_path, tiny):
    prefix = copy_of(tmp_path, tiny["V2"])
    entries = []
    for key, value in table_entries(f"{prefix}.index"):
        if key == b"InceptionV3/Logits/Conv2d_1c_1x1/biases":
            entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
            entry.size = 2**60
            value = entry.SerializeToString()
        entries.append((key, value))
    write_table(f"{prefix}.index", entries)
    size = os.path.getsize(f"{prefix}.data-00000-of-00001")
    assert error_of(prefix) == (
        f"cannot read checkpoint data file {prefix}.data-00000-of-00001 (truncated or corrupt?): "
        f"the index places more bytes in it than its {size}"
    )


def test_v1_shape_of_2_to_the_40_values(tmp_path, tiny):
    prefix = copy_of(tmp_path, tiny["V1"])
    entries = table_entries(prefix)
    meta = saved_tensor_slice_pb2.SavedTensorSlices.FromString(entries[0][1])
    meta.meta.tensor[0].shape.dim[0].size = 2**40
    entries[0] = (b"", meta.SerializeToString())
    write_table(prefix, entries)
    name, shape = meta.meta.tensor[0].name, tuple(d.size for d in meta.meta.tensor[0].shape.dim)
    assert shape == (2**40, 3, 3, 8)
    assert error_of(prefix) == (
        f"cannot read checkpoint {prefix}: variable {name} of shape {shape} "
        f"does not fit in a file of {os.path.getsize(prefix)} bytes"
    )


def test_index_handle_of_2_to_the_60_bytes(tmp_path, tiny):
    path = str(tmp_path / "hostile.ckpt")
    write_table(path, table_entries(tiny["V1"]))
    with open(path, "r+b") as f:  # the footer: an empty metaindex handle, then the index's
        f.seek(-48, os.SEEK_END)
        f.write((varint(0) + varint(0) + varint(0) + varint(2**60)).ljust(40, b"\x00"))
    assert error_of(path) == (
        f"cannot read checkpoint {path}: a block of {2**60} bytes at offset 0 runs past the end "
        f"({os.path.getsize(path) - 48} bytes)"
    )


def test_snappy_block_is_refused(tmp_path, tiny):
    path = str(tmp_path / "snappy.ckpt")
    write_table(path, table_entries(tiny["V1"]))
    with open(path, "r+b") as f:  # the data block (at 0) marked Snappy-compressed, its checksum valid
        raw = bytearray(f.read())
        (offset, size), *_ = tf_checkpoint._index(memoryview(raw))[0]
        raw[size] = 1
        crc = tf_checkpoint.crc32c([bytes(raw[: size + 1])])[0]
        raw[size + 1 : size + 5] = mask(crc).to_bytes(4, "little")
        f.seek(0)
        f.write(raw)
    assert offset == 0
    assert error_of(path) == (
        f"cannot read checkpoint {path}: the block at offset 0 is Snappy-compressed; TensorFlow's "
        "checkpoint writers store blocks uncompressed, so this file was not written by a TensorFlow Saver"
    )


def test_crc32c_known_values():
    known = [0xE3069283, 0, 0xC1D04330, 0x8A9136AA]  # RFC 3720 B.4 (32 zeros); "a" from crc32c tools
    assert tf_checkpoint.crc32c([b"123456789", b"", b"a", bytes(32)]) == known
    rng = np.random.default_rng(0)
    buffers = [rng.integers(0, 256, n, dtype=np.uint8) for n in (4, 1023, 1025, 4097, 70001)]
    assert tf_checkpoint.crc32c(buffers) == [tf_checkpoint.crc32c([b.tobytes()])[0] for b in buffers]
    zlib_like = tf_checkpoint.crc32c([buffers[-1][:5000].tobytes()])[0]
    byte_table, crc = tf_checkpoint._crc_tables()[0], 0xFFFFFFFF
    for b in buffers[-1][:5000].tolist():
        crc = byte_table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    assert zlib_like == crc ^ 0xFFFFFFFF


def test_reads_without_tensorflow(tmp_path, tiny):
    """The module alone, with ``import tensorflow`` made to fail, reads both formats."""
    np.savez(tmp_path / "want.npz", **{k.replace("/", "|"): v for k, v in TINY.items()})
    module = os.path.join(os.path.dirname(checkpoint.__file__), "tf_checkpoint.py")
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import numpy as np
        sys.modules["tensorflow"] = None  # any import of it raises ImportError
        spec = importlib.util.spec_from_file_location("tf_checkpoint", {module!r})
        reader = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reader)
        want = dict(np.load({str(tmp_path / "want.npz")!r}))
        for prefix in ({tiny["V1"]!r}, {tiny["V2"]!r}):
            got = reader.read(prefix)
            assert sorted(got) == sorted(k.replace("|", "/") for k in want)
            assert all(got[k.replace("|", "/")].tobytes() == v.tobytes() for k, v in want.items())
        print("read", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "read ['tensorflow']"  # only the blocked entry: nothing imported


def test_speed_tool_on_a_small_checkpoint(capsys):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tools"))
    import checkpoint_reader_speed

    rows = checkpoint_reader_speed.main(["--family", "inception_v3", "--variables", "6", "--repeats", "1"])
    assert [(r["format"], r["reader"]) for r in rows] == [
        ("V1", "pure"), ("V1", "tensorflow"), ("V2", "pure"), ("V2", "tensorflow")
    ]
    assert all(r["wall"] > 0 for r in rows)
    assert "bytes identical between the readers" in capsys.readouterr().out
