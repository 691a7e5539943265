"""Frames: where they come from (`sources`: cameras through OpenCV or picamera2, videos, streams,
images, folders) and how a frame becomes the model's input (`geometry`: crop, letterbox, stretch; class
maps back onto the frame).

May import: edge_app.errors, numpy and OpenCV; nothing about models.
"""
