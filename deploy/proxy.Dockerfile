# The reverse proxy of compose.yaml: nginx from Debian's packages, unprivileged, with deploy/nginx.conf.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light && rm -rf /var/lib/apt/lists/*
COPY deploy/nginx.conf /etc/nginx/medrobust.conf
USER www-data
EXPOSE 8080
CMD ["nginx", "-c", "/etc/nginx/medrobust.conf", "-g", "daemon off;"]
