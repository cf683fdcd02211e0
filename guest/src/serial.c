/*
 * COM1 output. The VMM's UART is always ready (LSR reads 0x60), so there is no
 * polling: a whole buffer goes out with one `rep outsb`, i.e. one VM exit.
 * Formatting runs in ring 0, which is slow here, so it is kept minimal.
 */
#include "serial.h"
#include "gv_abi.h"
#include "io.h"
#include <stdint.h>

void serial_write(const char *buf, size_t len)
{
	if (len)
		outsb(GV_PORT_COM1, buf, len);
}

void serial_putc(char c)
{
	outb(GV_PORT_COM1, (uint8_t)c);
}

void serial_puts(const char *s)
{
	size_t n = 0;
	while (s[n])
		n++;
	serial_write(s, n);
}

/*
 * The formatter keeps its output pointer in a register (helpers take and
 * return it): ring-0 instructions are expensive, and the literal text of a
 * line is most of the work.
 */
static char *put_str(char *p, char *end, const char *s)
{
	if (!s)
		s = "(null)";
	while (*s && p < end)
		*p++ = *s++;
	return p;
}

static char *put_num(char *p, char *end, uint64_t v, unsigned base)
{
	char tmp[20]; /* 2^64-1 has 20 decimal digits */
	int n = 0;
	do {
		tmp[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	while (n && p < end)
		*p++ = tmp[--n];
	return p;
}

size_t kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	if (!size)
		return 0;
	char *p = buf, *end = buf + size - 1; /* keep a byte for the NUL */
	for (;;) {
		char c;
		while ((c = *fmt) != '%' && c) { /* literal text */
			if (p < end)
				*p++ = c;
			fmt++;
		}
		if (!c)
			break;
		int is_long = 0;
		if (*++fmt == 'l') {
			is_long = 1;
			fmt++;
		}
		switch (*fmt) {
		case 's':
			p = put_str(p, end, va_arg(ap, const char *));
			break;
		case 'c':
			if (p < end)
				*p++ = (char)va_arg(ap, int);
			break;
		case 'd': {
			int64_t v = is_long ? va_arg(ap, int64_t) : va_arg(ap, int);
			if (v < 0) {
				if (p < end)
					*p++ = '-';
				p = put_num(p, end, -(uint64_t)v, 10);
			} else {
				p = put_num(p, end, (uint64_t)v, 10);
			}
			break;
		}
		case 'u':
			p = put_num(p, end, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10);
			break;
		case 'x':
			p = put_num(p, end, is_long ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16);
			break;
		case 'p':
			p = put_str(p, end, "0x");
			p = put_num(p, end, (uintptr_t)va_arg(ap, void *), 16);
			break;
		case '\0': /* a lone '%' at the end */
			*p = '\0';
			return (size_t)(p - buf);
		default: /* "%%" and unknown conversions print as written */
			if (*fmt != '%' && p < end)
				*p++ = '%';
			if (p < end)
				*p++ = *fmt;
			break;
		}
		fmt++;
	}
	*p = '\0';
	return (size_t)(p - buf);
}

size_t ksnprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	size_t n = kvsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

void kprintf(const char *fmt, ...)
{
	char line[KPRINTF_MAX];
	va_list ap;
	va_start(ap, fmt);
	size_t n = kvsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	serial_write(line, n);
}
