"""The reference run console: static HTML, CSS and ES modules served at /console, no build step."""
