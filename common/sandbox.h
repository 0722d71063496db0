/* sandbox.h — the offline judge for sandbox-world renders (render.h).  It segments the objects on
 * the background, classifies each by shape, colour and pattern, counts them, or reads a portrait's
 * attributes, and answers in the VLM protocol's caption formats:
 *   math:      "2 cups" or "Error"              (one object type, all recognised)
 *   mapping:   "Object: cup" or "Object: Error"
 *   knowledge: "Person: <skin>; <hair>; <kid|mid-age|old>; <male|female>", "Fruit: x",
 *              "Flower: x" or "Reject"
 * then scores the caption against the expected answer with the protocol's rules (count and type
 * must match; singular and plural of one object are the same; knowledge compares each slot). */
#ifndef USBX_SANDBOX_H
#define USBX_SANDBOX_H
#include <stddef.h>
#include <stdint.h>

/* What the judge saw in an image. */
typedef struct {
  int kind;            /* 0 nothing, 1 objects, 2 portrait, -1 unreadable */
  int n;               /* number of objects */
  int obj[16];         /* class of each (-1 = unrecognised) */
  int skin, hair, age, gender;   /* portrait attributes (-1 unclear) */
  char why[160];       /* why it is unreadable / what was unrecognised */
} usbx_scene_reading;

/* Reads an RGB image. */
void usbx_sandbox_read(const uint8_t *rgb, int w, int h, usbx_scene_reading *out);
/* The caption for a task ("math", "mapping", "knowledge"; anything else is treated as math). */
char *usbx_sandbox_caption(const char *task, const usbx_scene_reading *r);
/* Scores a caption against the expected answer (1 YES, 0 NO). */
int usbx_sandbox_score(const char *task, const char *caption, const char *expected);

/* Judges one image file.  Returns 0 when judged (*yes = 1/0, *caption and *analysis malloc'd);
 * 1 when the image does not exist or cannot be decoded (verdict IMAGE_NOT_FOUND / ERROR: *yes =
 * 0, *caption = "", *analysis says why); -1 on a bad argument (err set). */
int usbx_sandbox_judge(const char *task, const char *image_path, const char *expected_answer,
                       char **caption, char **analysis, int *yes, char *err, size_t errlen);
/* Same on a pixel buffer (no file). */
int usbx_sandbox_judge_rgb(const char *task, const uint8_t *rgb, int w, int h, const char *expected_answer,
                           char **caption, char **analysis, int *yes);

#endif
