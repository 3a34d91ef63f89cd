"""The Gradio web app. Only this package imports gradio."""
