"""torch.distributed.checkpoint storage that never unpickles.

DCP's own FileSystemWriter stores each tensor with `torch.save` and the checkpoint's index
(`.metadata`) as a pickle, which its reader loads with `pickle.load`: a checkpoint folder on shared
storage would be code anyone with write access there could run. cpt's writer stores each tensor
chunk as its raw bytes (one file per rank) and the index as JSON (`index.json`); its reader
parses only those, turning bytes back into tensors by the dtype and shape the index records.
Only tensors are saved (no pickled Python objects): the model's and AdamW's state, flattened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from store.errors import CheckpointError

INDEX = "index.json"
FORMAT = "cpt-dcp-index/1"


def _dtype(name: str) -> torch.dtype:
    value = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise CheckpointError(f"checkpoint index names an unknown dtype {name!r}")
    return value


def encode(md: Metadata) -> dict[str, Any]:
    tensors = {}
    for fqn, item in md.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata):
            raise CheckpointError(f"{fqn}: only tensors are checkpointed (no pickled objects)")
        tensors[fqn] = {"dtype": str(item.properties.dtype), "size": list(item.size),
                        "chunks": [[list(c.offsets), list(c.sizes)] for c in item.chunks]}
    storage = [[k.fqn, list(k.offset) if k.offset is not None else None, v.relative_path, v.offset, v.length]
               for k, v in md.storage_data.items()]
    planner = {k: list(v) for k, v in (md.planner_data or {}).items()}
    return {"format": FORMAT, "version": md.version, "tensors": tensors, "storage": storage, "planner": planner}


def decode(data: dict[str, Any]) -> Metadata:
    if data.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint index of format {data.get('format')!r}, expected {FORMAT}")
    tensors = {fqn: TensorStorageMetadata(TensorProperties(dtype=_dtype(t["dtype"])), torch.Size(t["size"]),
                                          [ChunkStorageMetadata(torch.Size(o), torch.Size(s)) for o, s in t["chunks"]])
               for fqn, t in data["tensors"].items()}
    storage = {MetadataIndex(fqn, torch.Size(off) if off is not None else None): _StorageInfo(path, start, length)
               for fqn, off, path, start, length in data["storage"]}
    planner = {k: tuple(v) for k, v in data["planner"].items()}
    return Metadata(tensors, planner_data=planner, storage_data=storage, storage_meta=StorageMeta(),
                    version=data.get("version"))


class Writer(FileSystemWriter):
    """Raw tensor bytes, one file per rank (`__<rank>_0.distcp`), and the JSON index."""

    def __init__(self, path: str | Path):
        super().__init__(path, single_file_per_rank=True, sync_files=True, thread_count=1, overwrite=True)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        name = f"{plan.storage_data.prefix}0.distcp"
        results, offset = [], 0
        with open(Path(self.path) / name, "wb") as f:
            for item in plan.items:
                if item.type == WriteItemType.BYTE_IO:
                    raise CheckpointError(f"{item.index.fqn}: only tensors are checkpointed (no pickled objects)")
                tensor = planner.resolve_data(item).detach().contiguous().cpu()
                raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
                f.write(raw)
                results.append(WriteResult(index=item.index, size_in_bytes=len(raw),
                                           storage_data=_StorageInfo(name, offset, len(raw))))
                offset += len(raw)
            f.flush()
            os.fsync(f.fileno())
        fut: Future = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.storage_data = {r.index: r.storage_data for rs in results for r in rs}
        metadata.version = "1.0.0"
        path = Path(self.path) / INDEX
        tmp = path.with_name(f".{INDEX}.tmp")
        with open(tmp, "w") as f:
            json.dump(encode(metadata), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class Reader(FileSystemReader):
    """Reads what `Writer` wrote; nothing else (a pickled `.metadata` is never opened)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / INDEX
        try:
            return decode(json.loads(path.read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: not a cpt sharded checkpoint (no {INDEX})") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt checkpoint index ({exc})") from None

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        self._md = metadata

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        from torch.distributed._shard._utils import narrow_tensor_by_index
        from torch.distributed.checkpoint.planner import LoadItemType

        for req in plan.items:
            if req.type == LoadItemType.BYTE_IO:
                raise CheckpointError(f"{self.path}: {req.storage_index.fqn} is not a tensor")
            info = self.storage_data[req.storage_index]
            meta = self._md.state_dict_metadata[req.storage_index.fqn]
            chunk = next(c for c in meta.chunks if tuple(c.offsets) == tuple(req.storage_index.offset))
            with open(Path(self.path) / info.relative_path, "rb") as f:
                f.seek(info.offset)
                raw = f.read(info.length)
            if len(raw) != info.length:
                raise CheckpointError(f"{self.path / info.relative_path}: truncated")
            tensor = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(meta.properties.dtype)
            tensor = narrow_tensor_by_index(tensor.reshape(chunk.sizes), req.storage_offsets, req.lengths)
            target = planner.resolve_tensor(req).detach()
            if target.size() != tensor.size():
                raise CheckpointError(f"{self.path}: {req.storage_index.fqn} has shape {tuple(tensor.size())}, "
                                      f"the model {tuple(target.size())}")
            target.copy_(tensor)
            planner.commit_tensor(req, target)
        fut: Future = Future()
        fut.set_result(None)
        return fut
