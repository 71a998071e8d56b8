from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Log(_message.Message):
    __slots__ = ("Time", "Contents", "Time_ns")
    class Content(_message.Message):
        __slots__ = ("Key", "Value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        Key: str
        Value: str
        def __init__(self, Key: _Optional[str] = ..., Value: _Optional[str] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    CONTENTS_FIELD_NUMBER: _ClassVar[int]
    TIME_NS_FIELD_NUMBER: _ClassVar[int]
    Time: int
    Contents: _containers.RepeatedCompositeFieldContainer[Log.Content]
    Time_ns: int
    def __init__(self, Time: _Optional[int] = ..., Contents: _Optional[_Iterable[_Union[Log.Content, _Mapping]]] = ..., Time_ns: _Optional[int] = ...) -> None: ...

class LogTag(_message.Message):
    __slots__ = ("Key", "Value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    Key: str
    Value: str
    def __init__(self, Key: _Optional[str] = ..., Value: _Optional[str] = ...) -> None: ...

class LogGroup(_message.Message):
    __slots__ = ("Logs", "Reserved", "Topic", "Source", "LogTags")
    LOGS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOGTAGS_FIELD_NUMBER: _ClassVar[int]
    Logs: _containers.RepeatedCompositeFieldContainer[Log]
    Reserved: str
    Topic: str
    Source: str
    LogTags: _containers.RepeatedCompositeFieldContainer[LogTag]
    def __init__(self, Logs: _Optional[_Iterable[_Union[Log, _Mapping]]] = ..., Reserved: _Optional[str] = ..., Topic: _Optional[str] = ..., Source: _Optional[str] = ..., LogTags: _Optional[_Iterable[_Union[LogTag, _Mapping]]] = ...) -> None: ...

class LogGroupList(_message.Message):
    __slots__ = ("logGroupList",)
    LOGGROUPLIST_FIELD_NUMBER: _ClassVar[int]
    logGroupList: _containers.RepeatedCompositeFieldContainer[LogGroup]
    def __init__(self, logGroupList: _Optional[_Iterable[_Union[LogGroup, _Mapping]]] = ...) -> None: ...
