"""ACPI tables (checksums, FADT registers, _S5_, MADT, the DSDT's devices), the power register device and
the power button."""

import shutil
import struct
import subprocess
import threading

import pytest

from vmkit.arch.x86 import acpi, layout
from vmkit.devices.legacy.acpi_power import AcpiPower
from vmkit.devices.legacy.power_button import PowerButton
from vmkit.memory import GuestMemory


@pytest.fixture
def tables():
    memory = GuestMemory.create(4 << 20)
    rsdp = acpi.write_acpi_tables(memory, num_cpus=3)
    yield memory, rsdp
    memory.close()


def _sum_ok(data: bytes) -> bool:
    return sum(data) % 256 == 0


def _find(memory, rsdp, signature):
    xsdt = struct.unpack_from("<Q", memory.read(rsdp + 24, 8))[0]
    length = memory.read_u32(xsdt + 4)
    for off in range(36, length, 8):
        addr = struct.unpack_from("<Q", memory.read(xsdt + off, 8))[0]
        if memory.read(addr, 4) == signature:
            return memory.read(addr, memory.read_u32(addr + 4))
    raise AssertionError(f"{signature!r} not in the XSDT")


def test_rsdp_and_every_table_checksum(tables):
    memory, rsdp = tables
    header = memory.read(rsdp, 36)
    assert header[:8] == b"RSD PTR " and header[15] == 2
    assert _sum_ok(header[:20]) and _sum_ok(header)
    for signature in (b"FACP", b"APIC"):
        assert _sum_ok(_find(memory, rsdp, signature))


def test_fadt_is_hardware_reduced_with_sleep_and_reset_registers(tables):
    memory, rsdp = tables
    fadt = _find(memory, rsdp, b"FACP")
    assert len(fadt) == 0x114 and fadt[8] == 6
    flags = struct.unpack_from("<I", fadt, 0x70)[0]
    assert flags & acpi.FADT_HW_REDUCED_ACPI and flags & acpi.FADT_RESET_REG_SUP
    assert struct.unpack_from("<BBBBQ", fadt, 0xF4) == (1, 8, 0, 1, acpi.SLEEP_CONTROL_PORT)
    assert struct.unpack_from("<BBBBQ", fadt, 0x74) == (1, 8, 0, 1, acpi.RESET_PORT)
    dsdt_addr = struct.unpack_from("<Q", fadt, 0x8C)[0]
    dsdt = memory.read(dsdt_addr, memory.read_u32(dsdt_addr + 4))
    assert _sum_ok(dsdt) and b"_S5_\x12\x07\x04\x0a\x05" in dsdt


def test_madt_lists_each_cpu_and_the_ioapic(tables):
    memory, rsdp = tables
    madt = _find(memory, rsdp, b"APIC")
    entries, pos = [], 44
    while pos < len(madt):
        entries.append((madt[pos], madt[pos + 2 : pos + madt[pos + 1]]))
        pos += madt[pos + 1]
    cpus = [body[1] for kind, body in entries if kind == 0]
    assert cpus == [0, 1, 2]
    assert [kind for kind, _ in entries].count(1) == 1


def test_power_register_device():
    events = []
    dev = AcpiPower(lambda: events.append("off"), lambda: events.append("reset"), acpi.RESET_VALUE)
    dev.write(0, bytes([(3 << 2) | 0x20]))      # S3 sleep: not supported, ignored
    dev.write(0, bytes([5 << 2]))               # S5 without SLP_EN: nothing yet
    assert events == []
    dev.write(0, bytes([(5 << 2) | 0x20]))
    dev.write(2, bytes([acpi.RESET_VALUE]))
    assert events == ["off", "reset"]


def test_dsdt_describes_com1_with_its_ports_and_irq():
    dsdt = acpi.dsdt()
    device = dsdt.index(acpi.AML_DEVICE)
    length = dsdt[device + 2]
    assert length < 0x40 and dsdt[device + 3 + length - 1 :].startswith(acpi.AML_DEVICE)   # then PCI0
    body = dsdt[device + 3 : device + 2 + length]
    assert body.startswith(b"\\\x2e_SB_COM1")                          # \_SB.COM1
    assert b"_HID\x0c\x41\xd0\x05\x01" in body                         # EisaId ("PNP0501")
    assert b"_UID\x00" in body
    crs = body[body.index(b"_CRS") + 4:]
    assert crs[0] == 0x11 and crs[2:4] == bytes([0x0A, 13])            # Buffer of 13 bytes
    resources = crs[4:]
    assert resources[:8] == bytes([0x47, 1, 0xF8, 0x03, 0xF8, 0x03, 1, 8])   # IO 0x3f8, 8 ports
    assert resources[8:11] == bytes([0x22, 0x10, 0x00])                # IRQ 4, edge, active high
    assert resources[11:] == bytes([0x79, 0])                          # end tag


def test_aml_package_lengths():
    assert acpi._pkg_length(bytes(0x3E)) == bytes([0x3F])
    assert acpi._pkg_length(bytes(0x3F)) == bytes([0x41, 0x04])        # 0x41 = 0x3F + 2
    assert acpi._pkg_length(bytes(0xFFD)) == bytes([0x4F, 0xFF])
    assert acpi._pkg_length(bytes(0xFFE)) == bytes([0x81, 0x00, 0x01])  # 0x1001 in three bytes


def test_dsdt_describes_the_pci_root_and_its_windows():
    """Written from ACPI 6.4 (6.4.3.5 address space descriptors) and the PCI Firmware spec: a
    PNP0A08 root with bus 0, the 0xCF8 ports, I/O around them, and the BAR window below ECAM."""
    body = _device_body(acpi.dsdt(), b"PCI0")
    assert b"_HID\x0c\x41\xd0\x0a\x08" in body and b"_CID\x0c\x41\xd0\x0a\x03" in body   # PNP0A08, PNP0A03
    assert b"_SEG\x00" in body and b"_BBN\x00" in body
    crs = body[body.index(b"_CRS") + 4:]
    resources = crs[crs.index(bytes([0x88, 13, 0, 2])):]
    bus = resources[:16]
    assert bus == bytes([0x88, 13, 0, 2, 0x0C, 0]) + struct.pack("<HHHHH", 0, 0, 0, 0, 1)       # bus 0 only
    assert bytes([0x47, 1, 0xF8, 0x0C, 0xF8, 0x0C, 1, 8]) in resources                          # 0xCF8, 8 ports
    assert bytes([0x88, 13, 0, 1, 0x0C, 3]) + struct.pack("<HHHHH", 0, 0, 0xCF7, 0, 0xCF8) in resources
    assert bytes([0x88, 13, 0, 1, 0x0C, 3]) + struct.pack("<HHHHH", 0, 0xD00, 0xFFFF, 0, 0xF300) in resources
    window = bytes([0x87, 23, 0, 0, 0x0C, 1]) + struct.pack("<IIIII", 0, 0xC0000000, 0xDFFFFFFF, 0, 0x20000000)
    assert window in resources and resources.endswith(bytes([0x79, 0]))


def _device_body(dsdt: bytes, name: bytes) -> bytes:
    """Device (\\_SB.name)'s path and body, read back through its PkgLength (one or two bytes)."""
    at = dsdt.index(b"\\\x2e_SB_" + name)
    if dsdt[at - 3 : at - 1] == acpi.AML_DEVICE and dsdt[at - 1] < 0x40:
        return dsdt[at : at - 1 + dsdt[at - 1]]
    assert dsdt[at - 4 : at - 2] == acpi.AML_DEVICE and dsdt[at - 2] >> 6 == 1
    return dsdt[at : at - 2 + ((dsdt[at - 2] & 0x0F) | (dsdt[at - 1] << 4))]


def test_dsdt_has_a_power_button_and_a_generic_event_device_that_notifies_it():
    """Written from ACPI 6.4: 5.6.9 (the GED, _EVT called with the GSI), 6.4.3.6 (Extended Interrupt
    descriptor), 20.2.5 (Method, If, LEqual, Notify encodings), 4.8.2.2.1.3 (button Notify 0x80)."""
    dsdt = acpi.dsdt()
    button = _device_body(dsdt, b"PWRB")
    assert button == b"\\\x2e_SB_PWRB" + b"\x08_HID\x0c\x41\xd0\x0c\x0c" + b"\x08_UID\x00"   # EisaId PNP0C0C
    ged = _device_body(dsdt, b"GED_")
    assert ged.startswith(b"\\\x2e_SB_GED_\x08_HID\x0dACPI0013\x00\x08_UID\x00")
    crs = ged[ged.index(b"_CRS") + 4:]
    gsi = layout.POWER_BUTTON_GSI
    interrupt = bytes([0x89, 6, 0, 0x03, 1]) + struct.pack("<I", gsi)      # consumer, edge, high, exclusive
    assert crs[:4] == bytes([0x11, 2 + 1 + len(interrupt) + 2, 0x0A, len(interrupt) + 2])
    assert crs[4 : 4 + len(interrupt) + 2] == interrupt + b"\x79\x00"
    method = crs[4 + len(interrupt) + 2:]
    notify = b"\x86\\\x2e_SB_PWRB\x0a\x80"                                   # Notify (\_SB.PWRB, 0x80)
    body_if = b"\xa0" + bytes([1 + 4 + len(notify)]) + b"\x93\x68\x0a" + bytes([gsi]) + notify
    assert method == b"\x14" + bytes([1 + 5 + len(body_if)]) + b"_EVT\x01" + body_if
    assert dsdt.endswith(method)                                            # the GED is the last object


def test_dsdt_disassembles_with_iasl(tmp_path):
    """ACPICA's disassembler reads the DSDT back as the ASL vmkit means (acpica-tools)."""
    iasl = shutil.which("iasl")
    if iasl is None:
        pytest.skip("iasl is not installed (apt-get install acpica-tools): the DSDT is checked byte by byte only")
    (tmp_path / "dsdt.dat").write_bytes(acpi.dsdt())
    done = subprocess.run([iasl, "-d", "dsdt.dat"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    asl = " ".join((tmp_path / "dsdt.dsl").read_text().split())
    gsi = f"0x{layout.POWER_BUTTON_GSI:08X}"
    for expected in ('Name (_S5, Package (0x04) // _S5_: S5 System State { 0x05, Zero, Zero, Zero })',
                     'Device (\\_SB.COM1) { Name (_HID, EisaId ("PNP0501")',
                     'IRQNoFlags () {4}',                                   # edge, active high
                     'Device (\\_SB.PCI0) { Name (_HID, EisaId ("PNP0A08")',
                     'Device (\\_SB.PWRB) { Name (_HID, EisaId ("PNP0C0C")',
                     'Device (\\_SB.GED) { Name (_HID, "ACPI0013"',
                     f'Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {{ {gsi}, }}',
                     f'Method (_EVT, 1, NotSerialized) // _EVT: Event {{ If ((Arg0 == 0x{layout.POWER_BUTTON_GSI:02X})) '
                     '{ Notify (\\_SB.PWRB, 0x80) // Status Change } }'):
        assert expected in asl, asl


def test_power_button_press_is_one_edge_from_any_thread():
    lines = []
    button = PowerButton(lines.append)
    button.press()
    assert lines == [True, False] and button.presses == 1
    threads = [threading.Thread(target=lambda: [button.press() for _ in range(200)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert button.presses == 801
    assert lines == [True, False] * 801                       # every press is a whole edge, never interleaved
