"""Protobuf schemas of the backends (`*.proto`, written from the public schemas) and the modules protoc generated
from them (`*_pb2.py` and typed `*_pb2.pyi`; regenerate with `python -m grpc_tools.protoc -I outputs/proto
--python_out=outputs/proto --pyi_out=outputs/proto logproto.proto sls_logs.proto`, grpcio-tools built for the
protobuf runtime in pyproject). The Loki and SLS encoders build their bodies with these classes."""
