/* fixtures.h — the fixture checker: runs every case of a folder in the format of
 * ../shared/fixtures/bagel-tiny-a against the model and reports per case group. */
#ifndef USBX_FIXTURES_H
#define USBX_FIXTURES_H
/* usbx-ckpt check-fixtures [--device cpu|cuda] [--strict] DIR */
int usbx_check_fixtures_main(int argc, char **argv);
#endif
