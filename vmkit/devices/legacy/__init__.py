"""PC legacy devices: 16550A UART, i8042, CMOS RTC, debug exit and debug console."""
