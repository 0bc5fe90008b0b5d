#!/usr/bin/env python3
"""moto's server with two answers of its EBS direct APIs made to match real EBS.

Usage: moto_server.py HOST PORT

moto 5.x answers BlockSize 512 (real EBS: 524288), which makes clients that
trust the answer (coldsnap) upload 512-byte blocks, and it answers BlockIndex
as a string in ListSnapshotBlocks/ListChangedBlocks (real EBS: an integer),
which typed SDKs (aws-sdk-ebs) refuse to parse. Everything else is moto as
installed (`pip install 'moto[server]'`), with MOTO_EC2_LOAD_DEFAULT_AMIS=false.
"""

import json
import os
import sys

# moto's ~1300 built-in AMIs would answer every DescribeImages; tests want
# only what they made.
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")

from moto.ebs import models, responses
from moto.server import main

EBS_BLOCK_SIZE = 524288

_original_init = models.EBSSnapshot.__init__


def _init(self, *args, **kwargs):
    _original_init(self, *args, **kwargs)
    self.block_size = EBS_BLOCK_SIZE


models.EBSSnapshot.__init__ = _init


def _integer_indices(method):
    def wrapper(self):
        body = json.loads(method(self))
        for key in ("Blocks", "ChangedBlocks"):
            if key in body:
                for block in body[key]:
                    block["BlockIndex"] = int(block["BlockIndex"])
                body[key].sort(key=lambda b: b["BlockIndex"])
        return json.dumps(body)

    return wrapper


responses.EBSResponse.list_snapshot_blocks = _integer_indices(
    responses.EBSResponse.list_snapshot_blocks
)
responses.EBSResponse.list_changed_blocks = _integer_indices(
    responses.EBSResponse.list_changed_blocks
)

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: moto_server.py HOST PORT")
    sys.exit(main(["-H", sys.argv[1], "-p", sys.argv[2]]))
