"""One vsock stream's state and credit (virtio 1.2, 5.10.6.3-5.10.6.6), apart from any socket.

The muxer feeds it the guest's packets and asks it what to send next. Credit is counted both
ways, modulo 2**32 as the spec counts it:

- to the guest: it may hold `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` more bytes; vmkit never
  sends more (`peer_credit`);
- from the guest: vmkit advertises `buf_alloc` and, in every header it sends, `fwd_cnt` (the bytes
  it has passed to the host program). A guest that sends more than `buf_alloc` minus what it has
  sent since the last `fwd_cnt` it was told breaks the protocol: ProtocolViolation, and the muxer
  resets the stream. The bytes the host program has not taken yet wait in `to_host`, which
  therefore never holds more than `buf_alloc`.
"""

from __future__ import annotations

import enum

from vmkit.devices.virtio.vsock.packet import HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, Header, Op

U32 = 0xFFFFFFFF
BUF_ALLOC = 256 * 1024                  # what vmkit holds for each stream's guest-to-host bytes


class State(enum.Enum):
    CONNECTING = "connecting"           # vmkit sent (or will send) REQUEST; waiting for RESPONSE
    ESTABLISHED = "established"
    CLOSED = "closed"                   # reset or finished; nothing more is taken


class Event(enum.Enum):
    """What a guest packet did, for the muxer to act on."""

    NONE = "none"
    ESTABLISHED = "established"         # the guest accepted vmkit's REQUEST
    REFUSED = "refused"                 # the guest answered vmkit's REQUEST with RST
    RESET = "reset"                     # the guest reset an established stream
    DATA = "data"                       # RW: the payload is to be taken with accept_data
    SHUTDOWN = "shutdown"               # the guest's shutdown flags grew


class ProtocolViolation(Exception):
    """The guest did what the stream's state does not allow; the stream is to be reset."""


class Connection:
    """One stream between a guest port and a host port."""

    def __init__(self, guest_cid: int, host_port: int, guest_port: int, *, initiated_by_host: bool,
                 buf_alloc: int = BUF_ALLOC) -> None:
        self.guest_cid, self.host_port, self.guest_port = guest_cid, host_port, guest_port
        self.buf_alloc = buf_alloc
        self.state = State.CONNECTING if initiated_by_host else State.ESTABLISHED
        self.rx_cnt = 0                 # bytes taken from the guest
        self.fwd_cnt = 0                # of those, bytes the host program has taken
        self.advertised_fwd_cnt = 0     # fwd_cnt in the last header sent to the guest
        self.tx_cnt = 0                 # bytes sent to the guest
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.guest_shutdown = 0         # SHUTDOWN_* flags the guest sent (sticky)
        self.host_eof = False           # the host program will send no more
        self.host_write_closed = False  # vmkit shut the host socket's write side
        self.to_host = bytearray()      # guest bytes the host program has not taken yet
        self.pending: set[Op] = {Op.REQUEST} if initiated_by_host else {Op.RESPONSE}
        self.pending_shutdown = 0       # flags of a SHUTDOWN still to send
        self.asked_credit = False       # a CREDIT_REQUEST went out since the guest last gave credit

    @property
    def key(self) -> tuple[int, int]:
        return self.host_port, self.guest_port

    # --- credit ------------------------------------------------------------------------------
    def peer_credit(self) -> int:
        """Bytes the guest has room for now."""
        in_flight = (self.tx_cnt - self.peer_fwd_cnt) & U32
        return max(self.peer_buf_alloc - in_flight, 0)

    def guest_may_send(self) -> int:
        """Bytes the guest may send on what it was last told."""
        return self.buf_alloc - ((self.rx_cnt - self.advertised_fwd_cnt) & U32)

    def credit_update_due(self) -> bool:
        """The guest's view of vmkit's free space is low, and a quarter of the buffer has freed since."""
        freed = (self.fwd_cnt - self.advertised_fwd_cnt) & U32
        return self.guest_may_send() < self.buf_alloc // 2 and freed >= self.buf_alloc // 4

    def wants_host_data(self) -> bool:
        """Should the host socket be read for the guest now?"""
        return (self.state is State.ESTABLISHED and not self.host_eof and not self.guest_shutdown & SHUTDOWN_RCV
                and Op.RST not in self.pending and self.peer_credit() > 0)

    # --- the guest's packets -----------------------------------------------------------------
    def receive(self, header: Header) -> Event:
        """Take one packet from the guest (not its payload). Raises ProtocolViolation when the
        state does not allow it."""
        if self.state is State.CLOSED:
            return Event.NONE
        if header.type != TYPE_STREAM:
            raise ProtocolViolation(f"type {header.type} is not STREAM")
        old_credit = self.peer_credit()
        self.peer_buf_alloc, self.peer_fwd_cnt = header.buf_alloc, header.fwd_cnt
        if self.peer_credit() > old_credit:
            self.asked_credit = False
        op = header.op
        if op == Op.RST:
            refused = self.state is State.CONNECTING
            self.state = State.CLOSED
            self.pending.clear()
            return Event.REFUSED if refused else Event.RESET
        if self.state is State.CONNECTING:
            if op != Op.RESPONSE:
                raise ProtocolViolation(f"op {op} while waiting for RESPONSE")
            self.state = State.ESTABLISHED
            self.pending.discard(Op.REQUEST)
            return Event.ESTABLISHED
        if op == Op.RW:
            if self.guest_shutdown & SHUTDOWN_SEND:
                raise ProtocolViolation("RW after the guest said it would send no more")
            return Event.DATA
        if op == Op.SHUTDOWN:
            if header.flags & ~(SHUTDOWN_RCV | SHUTDOWN_SEND):
                raise ProtocolViolation(f"SHUTDOWN flags {header.flags:#x}")
            grew = header.flags & ~self.guest_shutdown
            self.guest_shutdown |= header.flags
            return Event.SHUTDOWN if grew else Event.NONE
        if op == Op.CREDIT_UPDATE:
            return Event.NONE
        if op == Op.CREDIT_REQUEST:
            self.pending.add(Op.CREDIT_UPDATE)
            return Event.NONE
        raise ProtocolViolation(f"op {op} on an established stream")

    def accept_data(self, length: int) -> None:
        """Count `length` payload bytes of an RW packet; more than the guest may send breaks it."""
        if length > self.guest_may_send():
            raise ProtocolViolation(f"{length} bytes sent with {self.guest_may_send()} of credit")
        self.rx_cnt = (self.rx_cnt + length) & U32

    def forwarded(self, length: int) -> None:
        """The host program took `length` more bytes."""
        self.fwd_cnt = (self.fwd_cnt + length) & U32
        if self.credit_update_due():
            self.pending.add(Op.CREDIT_UPDATE)

    # --- what vmkit does -----------------------------------------------------------------------
    def reset(self) -> None:
        """End the stream with an RST to the guest (a violation, or the host side went away)."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.pending = {Op.RST}

    def finish(self) -> None:
        """Both sides are done: a SHUTDOWN still to send goes first, then the final RST."""
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self.pending &= {Op.SHUTDOWN}
            self.pending.add(Op.RST)

    def host_closed_send(self) -> None:
        """The host program sent its last byte (EOF): tell the guest."""
        if not self.host_eof:
            self.host_eof = True
            self.pending_shutdown |= SHUTDOWN_SEND
            self.pending.add(Op.SHUTDOWN)

    def finished(self) -> bool:
        """Both directions are over (or the guest will take nothing more and has sent its last
        byte) and the host program has every byte: time for the final RST."""
        if self.state is not State.ESTABLISHED or self.to_host:
            return False
        guest_done = bool(self.guest_shutdown & SHUTDOWN_SEND)
        return guest_done and (self.host_eof or bool(self.guest_shutdown & SHUTDOWN_RCV))

    def has_control(self) -> bool:
        return bool(self.pending)

    def next_control(self) -> Header | None:
        """The header of the next control packet to send, counted as sent (None: nothing due)."""
        for op in (Op.REQUEST, Op.RESPONSE, Op.CREDIT_UPDATE, Op.CREDIT_REQUEST, Op.SHUTDOWN, Op.RST):
            if op in self.pending:
                self.pending.discard(op)
                flags = 0
                if op == Op.SHUTDOWN:
                    flags, self.pending_shutdown = self.pending_shutdown, 0
                if op == Op.CREDIT_REQUEST:
                    self.asked_credit = True
                return self.header(op, flags=flags)
        return None

    def ask_credit_if_stuck(self) -> None:
        """The guest has no room: ask it once to say when it has."""
        if self.state is State.ESTABLISHED and self.peer_credit() == 0 and not self.asked_credit:
            self.pending.add(Op.CREDIT_REQUEST)
            self.asked_credit = True

    def header(self, op: Op, *, length: int = 0, flags: int = 0) -> Header:
        """A header from the host side of this stream, advertising the current credit."""
        self.advertised_fwd_cnt = self.fwd_cnt
        if op == Op.RW:
            self.tx_cnt = (self.tx_cnt + length) & U32
        return Header(HOST_CID, self.guest_cid, self.host_port, self.guest_port, length, TYPE_STREAM, op, flags,
                      self.buf_alloc, self.fwd_cnt)
