"""Slim-format checkpoints and archives for offline tests, from the reference manifests."""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import os
import tarfile
import threading
import time

import numpy as np
import tensorflow as tf

from keras_inception.core.registry import slim_manifest as manifest


def random_variables(family: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Every variable of the public checkpoint, random; BN variances positive."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in manifest(family).items():
        if name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("moving_mean", "beta", "biases")):
            value = rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, np.sqrt(1.0 / max(1, int(np.prod(shape[:-1])))), shape)
        out[name] = value.astype(np.float32)
    return out


def write_checkpoint(variables: dict[str, np.ndarray], prefix: str, version: str = "V1") -> str:
    """Save ``variables`` under their exact names with TF's own Saver, in format V1 or V2."""
    write_version = {"V1": tf.compat.v1.train.SaverDef.V1, "V2": tf.compat.v1.train.SaverDef.V2}[version]
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        feeds, tf_vars = {}, {}
        for i, (name, value) in enumerate(variables.items()):
            placeholder = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape)
            feeds[placeholder] = value
            tf_vars[name] = tf.compat.v1.Variable(placeholder, name=f"v{i}")
        saver = tf.compat.v1.train.Saver(var_list=tf_vars, write_version=write_version)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
            saver.save(session, prefix, write_meta_graph=False, write_state=False)
    return prefix


def pack(prefix: str, archive: str, extra: dict[str, bytes] | None = None) -> str:
    """A ``.tar.gz`` in the official layout: the checkpoint files at the archive's top level."""
    directory = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for f in sorted(os.listdir(directory)):
            if f == base or f.startswith(f"{base}."):
                tar.add(os.path.join(directory, f), arcname=f)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


@contextlib.contextmanager
def serve(directory: str, cut_after: int | None = None, trickle: float | None = None):
    """An HTTP server on 127.0.0.1 serving ``directory``; yields its base URL.

    With ``cut_after``, responses announce the full length but stop after that many
    bytes, like a dropped connection. With ``trickle``, they send one byte every
    ``trickle`` seconds, like a stalled mirror.
    """
    handler = functools.partial(_QuietHandler, directory=directory, cut_after=cut_after, trickle=trickle)
    server = _Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    block_on_close = False  # a trickling handler ends on its own once the client hangs up

    def handle_error(self, request, client_address):
        pass  # clients that give up (broken pipes) are what the tests provoke


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, cut_after=None, trickle=None, **kwargs):
        self.cut_after = cut_after
        self.trickle = trickle
        super().__init__(*args, **kwargs)

    def copyfile(self, source, outputfile):
        if self.trickle is not None:
            while byte := source.read(1):
                outputfile.write(byte)
                outputfile.flush()
                time.sleep(self.trickle)
            return None
        if self.cut_after is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self.cut_after))
        self.close_connection = True

    def log_message(self, *args):
        pass
