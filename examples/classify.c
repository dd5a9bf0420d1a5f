// Classifies a JPEG photo with a model compiled as a library (docs/library.md):
//   build/bin/xentcc models/cifar10.yaml --emit=lib -o build/cifar10
//   cc examples/classify.c -I build -L build -lcifar10 -ljpeg -fopenmp -lm -o build/classify
//   build/classify build/cifar10.safetensors photo.jpg
#include "cifar10.h"

#include <stdio.h>
#include <stdlib.h>
#include <jpeglib.h> // after stdio.h: it uses FILE and size_t

int main(int argc, char **argv) {
  if (argc != 3)
    return fprintf(stderr, "usage: %s WEIGHTS.safetensors PHOTO.jpg\n", argv[0]), 2;
  cifar10 *model = cifar10_load(argv[1]);
  if (!model)
    return fprintf(stderr, "%s\n", cifar10_error()), 1;
  FILE *f = fopen(argv[2], "rb");
  if (!f)
    return perror(argv[2]), 1;
  struct jpeg_decompress_struct jpeg; // libjpeg's default error handler exits on a bad file
  struct jpeg_error_mgr err;
  jpeg.err = jpeg_std_error(&err);
  jpeg_create_decompress(&jpeg);
  jpeg_stdio_src(&jpeg, f);
  jpeg_read_header(&jpeg, TRUE);
  jpeg.out_color_space = JCS_RGB; // grey photos too: the model converts as it was trained
  jpeg_start_decompress(&jpeg);
  size_t row = (size_t)jpeg.output_width * 3;
  unsigned char *pixels = malloc(row * jpeg.output_height);
  while (jpeg.output_scanline < jpeg.output_height) {
    unsigned char *line = pixels + jpeg.output_scanline * row;
    jpeg_read_scanlines(&jpeg, &line, 1);
  }
  float logits[cifar10_OUTPUTS];
  if (cifar10_predict_rgb8(model, pixels, jpeg.output_height, jpeg.output_width, logits))
    return fprintf(stderr, "%s\n", cifar10_error()), 1;
  int best = 0;
  for (int k = 1; k < cifar10_OUTPUTS; k++)
    if (logits[k] > logits[best])
      best = k;
  printf("%s: %s\n", argv[2], cifar10_class_names[best]);
  jpeg_finish_decompress(&jpeg), jpeg_destroy_decompress(&jpeg), fclose(f);
  free(pixels), cifar10_free(model);
  return 0;
}
