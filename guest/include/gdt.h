/* GDT with user segments and a TSS (rsp0, IST1, I/O permission bitmap). */
#ifndef GV_GDT_H
#define GV_GDT_H

/* Loads the GDT, reloads all segment registers and the task register. */
void gdt_init(void);

#endif /* GV_GDT_H */
