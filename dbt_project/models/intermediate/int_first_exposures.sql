{#- One row per experiment x user: the variant and time of their first exposure in the window. -#}
with

exposures as (

    select * from {{ ref('int_exposures_in_window') }}

),

first_exposures as (

    {{ first_exposure_rows('exposures') }}

)

select * from first_exposures
