/* render.h — the sandbox world: procedural icons for every catalogue object (shape x colour x
 * pattern), scenes of N non-overlapping instances with placement and size jitter, and simple
 * procedural portraits (skin category, hair colour, age group, gender cue).  Images are 8-bit RGB,
 * deterministic for a given seed.  The offline judge (sandbox.h) reads them back exactly. */
#ifndef USBX_RENDER_H
#define USBX_RENDER_H
#include <stdint.h>
#include <stddef.h>
#include <jv.h>
#include "synth.h"

#define USBX_RENDER_MIN 64        /* smallest supported image side */
#define USBX_RENDER_DEFAULT 128

/* icon vocabulary */
enum { USBX_SHAPE_CIRCLE, USBX_SHAPE_SQUARE, USBX_SHAPE_TRI_UP, USBX_SHAPE_TRI_DOWN, USBX_SHAPE_WIDE,
       USBX_SHAPE_TALL, USBX_NSHAPES };
enum { USBX_PAT_SOLID, USBX_PAT_DOT, USBX_PAT_CAP, USBX_NPATS };
#define USBX_NCOLOURS 9
extern const uint8_t usbx_palette[USBX_NCOLOURS][3];
extern const char *const usbx_colour_names[USBX_NCOLOURS];
extern const char *const usbx_shape_names[USBX_NSHAPES];
extern const char *const usbx_pattern_names[USBX_NPATS];
/* The icon of object class obj (unique per class). */
void usbx_object_icon(int obj, int *shape, int *colour, int *pattern);
/* Inverse: the class with that icon, or -1. */
int usbx_icon_object(int shape, int colour, int pattern);

/* Background colours: scenes are drawn on white, portraits on pale blue. */
extern const uint8_t usbx_bg_scene[3], usbx_bg_portrait[3];
extern const uint8_t usbx_skin_rgb[3][3];
extern const uint8_t usbx_hair_rgb[][3];

/* A scene of n instances; objs[i] is the class of instance i (pass the same class n times for a
 * count scene).  n at most 9.  Returns a malloc'd size*size*3 RGB buffer, or NULL (err set). */
uint8_t *usbx_render_scene(const int *objs, int n, int size, uint64_t seed, char *err, size_t errlen);
/* n instances of one class. */
uint8_t *usbx_render_count(int obj, int n, int size, uint64_t seed, char *err, size_t errlen);
/* A portrait with the given attributes (usbx_character fields skin, hair, age, gender). */
uint8_t *usbx_render_portrait(int skin, int hair, int age, int gender, int size, uint64_t seed);

/* What a task's correct image shows, decided from its answer: count + object (math, "3 cups"),
 * one object (mapping, fruit/flower knowledge), or a portrait (knowledge person).  Returns a
 * malloc'd RGB buffer, or NULL with a reason (unknown object, count out of 1..9, ...). */
uint8_t *usbx_render_answer(const char *task, const char *answer, int size, uint64_t seed, char *err, size_t errlen);
/* Renders rec's answer into path (PNG, atomic); 0 ok, -1 (err set). */
int usbx_render_task(jv rec, const char *path, int size, uint64_t seed, char *err, size_t errlen);

/* perturbations for judge tests (in place on an RGB image) */
void usbx_perturb_noise(uint8_t *rgb, int w, int h, double sigma, uint64_t seed);
void usbx_perturb_blur(uint8_t *rgb, int w, int h, int radius);

#endif
