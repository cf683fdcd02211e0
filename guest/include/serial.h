/* COM1 output and a small printf. Each call emits its bytes with one `rep outsb`. */
#ifndef GV_SERIAL_H
#define GV_SERIAL_H
#include <stdarg.h>
#include <stddef.h>

void serial_write(const char *buf, size_t len);
void serial_putc(char c);
void serial_puts(const char *s);

/*
 * Formats into buf (always NUL-terminated when size > 0) and returns the length
 * written. Conversions: %s %c %d %u %x %ld %lu %lx %p %%; output that does not
 * fit is cut off.
 */
size_t kvsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
size_t ksnprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Formats one line (at most KPRINTF_MAX bytes) and writes it in a single exit. */
#define KPRINTF_MAX 192
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* GV_SERIAL_H */
